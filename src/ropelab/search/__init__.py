"""LongRoPE's evolutionary search over per-dimension rescale factors λ and start tokens n̂."""
