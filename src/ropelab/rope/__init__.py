"""RoPE methods (pure functions), their registry, cos/sin building and the transformers adapter."""

from ropelab.rope.registry import (
    REGISTRY,
    RopeSpec,
    as_longrope,
    get_method,
    known_methods,
    rescale_factors_of,
)

__all__ = ["REGISTRY", "RopeSpec", "as_longrope", "get_method", "known_methods", "rescale_factors_of"]
