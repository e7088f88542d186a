"""CLEX's neural ODE over the log RoPE frequency basis (algorithms.md §4; Chen et al. 2024).

The state is ``z(t) = log inv_freq(t)`` (d/2 values), ``z(1) = log θ``. The time embedding is the NTK-style
basis ``ξ_i(t) = θ_i · α(t)^(-2i/(d-2))`` with ``α(t) = 2t − 1`` (α = 1 for t < 1), and the dynamics are

    dz/dt = W_down · σ(W_up · (z + log ξ(t))) + d/dt log ξ(t).

``W_down`` starts at zero, so the untrained ODE integrates to ``z(t) = log ξ(t)`` exactly: dynamic-NTK-style
scaling with base θ·α^{d/(d-2)}. The reference computes the time term as ``(dξ/dt)/ξ``, which is the same
analytic derivative (dα/dt = 2 included); here it is written as the derivative of log ξ directly.

The solver is the fixed-step fourth-order Runge-Kutta with the 3/8 rule — torchdiffeq's ``rk4``, which the
reference uses — never in half precision (fp64 state, fp32 result), with gradients through every step. torchdiffeq is an optional backend
(``ropelab[ode]``) giving the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ropelab.errors import RopelabError
from ropelab.rope.methods import rope_frequencies

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"tanh": nn.Tanh, "silu": nn.SiLU}
BACKENDS = ("rk4", "torchdiffeq")


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
        self.activation = ACTIVATIONS[activation]()
        nn.init.kaiming_uniform_(self.up, a=math.sqrt(5), generator=generator)  # as the reference
        self.register_buffer("log_theta", torch.log(rope_frequencies(head_dim, base).float()), persistent=False)
        self._time_terms: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def time_terms(self, t: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(log ξ(t), d/dt log ξ(t)) on the module's device, in ``dtype``; memoised per time because every
        training step walks the same RK4 grid again (constants: no gradient flows into them)."""
        key = (float(t), dtype, self.log_theta.device)
        if key not in self._time_terms:
            self._time_terms[key] = self._compute_time_terms(torch.as_tensor(t), dtype)
        return self._time_terms[key]

    def _compute_time_terms(self, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.log_theta.device
        return (ntk_log_frequencies(t.cpu(), self.head_dim, self.base, dtype).to(device),
                ntk_log_frequency_rate(t.cpu(), self.head_dim, dtype).to(device))

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        log_xi, rate = self.time_terms(torch.as_tensor(t), z.dtype)
        hidden = self.activation((z + log_xi) @ self.up.to(z.dtype))  # fp32 even inside a bf16 model
        return hidden @ self.down.to(z.dtype) + rate


def rk4_solve(f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z0: torch.Tensor,
              times: torch.Tensor, step: float) -> torch.Tensor:
    """Integrate dz/dt = f(t, z) from times[0], returning z at every entry of ``times`` (increasing).

    Fixed steps of at most ``step`` on each interval (the interval is split evenly, so each output time is hit
    exactly); RK4 with the 3/8 rule; differentiable.
    """
    if step <= 0:
        raise RopelabError(f"CLEX time_dt must be positive, got {step}")
    out, z = [z0], z0
    for t0, t1 in zip(times[:-1].tolist(), times[1:].tolist(), strict=True):
        if t1 < t0:
            raise RopelabError("rk4_solve needs increasing times")
        n = max(1, math.ceil((t1 - t0) / step - 1e-9))
        h = (t1 - t0) / n
        for k in range(n):
            t = torch.tensor(t0 + k * h, dtype=torch.float64)
            k1 = f(t, z)
            k2 = f(t + h / 3, z + h * k1 / 3)
            k3 = f(t + 2 * h / 3, z + h * (k2 - k1 / 3))
            k4 = f(t + h, z + h * (k1 - k2 + k3))
            z = z + h * (k1 + 3 * (k2 + k3) + k4) / 8
        out.append(z)
    return torch.stack(out)


def solve(dynamics: ClexDynamics, times: torch.Tensor, step: float = 0.01, backend: str = "rk4") -> torch.Tensor:
    """log inv_freq at each time in ``times`` (starting at 1), shape (len(times), d/2), fp32."""
    times = times.double().cpu()
    if float(times[0]) != 1.0:
        raise RopelabError("CLEX integrates from t = 1 (the original length)")
    # The state (≈ −10 for slow dimensions) is accumulated in float64: 700 fp32 steps drift by ~1e-5, while
    # fp64 on d/2 numbers costs nothing. The result is handed back in fp32, never in the model's half dtype.
    z0 = dynamics.log_theta.double()
    if backend == "rk4":
        return rk4_solve(dynamics, z0, times, step).float()
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
