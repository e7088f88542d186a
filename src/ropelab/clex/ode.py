"""CLEX's neural ODE over the log RoPE frequency basis (algorithms.md §4; Chen et al. 2024).

The state is ``z(t) = log inv_freq(t)`` (d/2 values), ``z(1) = log θ``. The time embedding is the NTK-style
basis ``ξ_i(t) = θ_i · α(t)^(-2i/(d-2))`` with ``α(t) = 2t − 1`` (α = 1 for t < 1), and the dynamics are

    dz/dt = W_down · σ(W_up · (z + log ξ(t))) + d/dt log ξ(t).

``W_down`` starts at zero, so the untrained ODE integrates to ``z(t) = log ξ(t)`` exactly: dynamic-NTK-style
scaling with base θ·α^{d/(d-2)}. The reference computes the time term as ``(dξ/dt)/ξ``, which is the same
analytic derivative (dα/dt = 2 included); here it is written as the derivative of log ξ directly.

The solver is the fixed-step fourth-order Runge-Kutta with the 3/8 rule — torchdiffeq's ``rk4``, which the
reference uses — never in half precision (fp64 state, fp32 result), with gradients through every step: its
backward is written by hand (``fused.py``; the same gradient as autograd, 4–5× cheaper). torchdiffeq is an
optional backend (``ropelab[ode]``) giving the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ropelab.clex.fused import Rk4ThroughDynamics, rk4_grid, stage_times
from ropelab.config import BACKENDS
from ropelab.errors import RopelabError
from ropelab.rope.methods import rope_frequencies

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"tanh": nn.Tanh, "silu": nn.SiLU}


def _exponents(head_dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """2i / (d − 2) for i = 0 … d/2 − 1: how strongly NTK scaling slows dimension i."""
    return 2.0 * torch.arange(head_dim // 2, dtype=dtype) / (head_dim - 2)


def ntk_alpha(t: float | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=dtype)
    return torch.where(t < 1, torch.ones_like(t), 2 * t - 1)


def ntk_log_frequencies(t: float | torch.Tensor, head_dim: int, base: float,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """log ξ(t), shape (d/2,)."""
    log_theta = torch.log(rope_frequencies(head_dim, base).float()).to(dtype)
    return log_theta - _exponents(head_dim, dtype) * torch.log(ntk_alpha(t, dtype))


def ntk_log_frequency_rate(t: float | torch.Tensor, head_dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """d/dt log ξ(t) = −(2i/(d−2)) · α'(t)/α(t), with α' = 2 for t ≥ 1 and 0 below."""
    t = torch.as_tensor(t, dtype=dtype)
    slope = torch.where(t < 1, torch.zeros_like(t), torch.full_like(t, 2.0))
    return -_exponents(head_dim, dtype) * slope / ntk_alpha(t, dtype)


class ClexDynamics(nn.Module):
    """The right-hand side dz/dt = f(t, z); parameters k·d² (16,384 for d = 128, k = 1)."""

    def __init__(self, head_dim: int, base: float, amplification: int = 1, activation: str = "tanh",
                 generator: torch.Generator | None = None):
        super().__init__()
        if head_dim < 4 or head_dim % 2:
            raise RopelabError(f"CLEX needs an even head_dim ≥ 4, got {head_dim}")
        if activation not in ACTIVATIONS:
            raise RopelabError(f"unknown CLEX activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if amplification < 1:
            raise RopelabError(f"CLEX amplification factor k must be ≥ 1, got {amplification}")
        self.head_dim, self.base = head_dim, float(base)
        self.up = nn.Parameter(torch.empty(head_dim // 2, amplification * head_dim))
        self.down = nn.Parameter(torch.zeros(amplification * head_dim, head_dim // 2))
        self.activation, self.activation_name = ACTIVATIONS[activation](), activation
        nn.init.kaiming_uniform_(self.up, a=math.sqrt(5), generator=generator)  # as the reference
        self.register_buffer("log_theta", torch.log(rope_frequencies(head_dim, base).float()), persistent=False)
        self._stage_terms: dict[tuple, tuple] = {}

    def time_terms(self, t: float, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(log ξ(t), d/dt log ξ(t)) for one time, on the module's device, in ``dtype``."""
        return self._ntk_terms(torch.tensor(float(t), dtype=torch.float64), dtype)

    def _ntk_terms(self, when: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.log_theta.device
        return (ntk_log_frequencies(when, self.head_dim, self.base, dtype).to(device),
                ntk_log_frequency_rate(when, self.head_dim, dtype).to(device))

    def stage_terms(self, times: list[float], step: float, dtype: torch.dtype) -> tuple:
        """The RK4 grid from times[0] to times[-1] and the time terms at all its stages, (steps, 4, d/2) each;
        memoised because every training step at the same t walks the same grid (constants: no gradient)."""
        key = (tuple(times), float(step), dtype, self.log_theta.device)
        if key not in self._stage_terms:
            steps, ends = rk4_grid(times, step)
            self._stage_terms[key] = (steps, ends, *self._ntk_terms(stage_times(steps)[..., None], dtype))
        return self._stage_terms[key]

    def forward(self, t: torch.Tensor | float, z: torch.Tensor) -> torch.Tensor:
        """f(t, z), for solvers that call the field (torchdiffeq); ``solve`` uses the fused RK4 below."""
        log_xi, rate = self.time_terms(float(t), z.dtype)
        return self.activation((z + log_xi) @ self.up.to(z.dtype)) @ self.down.to(z.dtype) + rate


def solve(dynamics: ClexDynamics, times: torch.Tensor, step: float = 0.01, backend: str = "rk4") -> torch.Tensor:
    """log inv_freq at each time in ``times`` (starting at 1), shape (len(times), d/2), fp32."""
    times = times.double().cpu()
    if float(times[0]) != 1.0:
        raise RopelabError("CLEX integrates from t = 1 (the original length)")
    # The state (≈ −10 for slow dimensions) is accumulated in float64: 700 fp32 steps drift by ~1e-5, while
    # fp64 on d/2 numbers costs nothing. The result is handed back in fp32, never in the model's half dtype.
    z0 = dynamics.log_theta.double()
    if backend == "rk4":
        steps, ends, log_xi, rate = dynamics.stage_terms(times.tolist(), step, z0.dtype)
        up, down = dynamics.up.to(z0.dtype), dynamics.down.to(z0.dtype)
        return Rk4ThroughDynamics.apply(z0, up, down, log_xi, rate, steps, ends, dynamics.activation_name).float()
    if backend == "torchdiffeq":
        try:
            from torchdiffeq import odeint
        except ImportError as error:
            raise RopelabError("clex.backend torchdiffeq needs the optional extra: pip install 'ropelab[ode]'") \
                from error
        return odeint(dynamics, z0, times.to(z0.device), method="rk4", options={"step_size": step}).float()
    raise RopelabError(f"unknown CLEX ODE backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def frequency_table(dynamics: ClexDynamics, max_t: int, step: float = 0.01, backend: str = "rk4") -> torch.Tensor:
    """inv_freq for every integer t = 1 … max_t, shape (max_t, d/2): what inference caches."""
    times = torch.arange(1, max_t + 1, dtype=torch.float32)
    if max_t == 1:
        return dynamics.log_theta.exp()[None]
    return solve(dynamics, times, step, backend).exp()
