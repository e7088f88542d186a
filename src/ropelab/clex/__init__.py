"""CLEX: continuous length extrapolation with a neural ODE over the RoPE frequency basis (algorithms.md §4)."""
