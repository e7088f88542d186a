"""The CLEX ODE: closed forms, the solver's order, gradients, and the optional torchdiffeq backend."""

from __future__ import annotations

import math

import pytest
import torch

from ropelab.clex.fused import Rk4ThroughDynamics
from ropelab.clex.ode import (
    ClexDynamics,
    frequency_table,
    ntk_log_frequencies,
    ntk_log_frequency_rate,
    solve,
)
from ropelab.errors import RopelabError
from ropelab.rope.methods import rope_frequencies
from ropelab.rope.registry import RopeSpec


def test_untrained_ode_reproduces_the_ntk_style_basis():
    dynamics = ClexDynamics(64, 10000.0, generator=torch.Generator().manual_seed(0))
    table = frequency_table(dynamics, 8)
    for t in range(1, 9):  # the ODE state is log inv_freq: compared there, ≤ 1e-5
        analytic = ntk_log_frequencies(t, 64, 10000.0)
        torch.testing.assert_close(table[t - 1].log(), analytic, rtol=0, atol=1e-5)
        # ... which is static NTK with factor α = 2t − 1, as the registry computes it
        ntk = RopeSpec("ntk", 64, 10000.0, factor=2 * t - 1).compute()[0]
        torch.testing.assert_close(table[t - 1].log(), ntk.float().log(), rtol=0, atol=1e-5)
    torch.testing.assert_close(table[0], rope_frequencies(64, 10000.0).float())


def test_time_rate_is_the_derivative_of_the_time_embedding():
    for t in (0.5, 1.0, 2.5, 7.0):
        eps = 1e-3
        numeric = (ntk_log_frequencies(t + eps, 32, 1e4).double() - ntk_log_frequencies(t - eps, 32, 1e4).double()) / (2 * eps)
        if t == 1.0:  # the kink at t = 1: the right derivative is the one the ODE uses
            numeric = (ntk_log_frequencies(t + eps, 32, 1e4).double() - ntk_log_frequencies(t, 32, 1e4).double()) / eps
        torch.testing.assert_close(ntk_log_frequency_rate(t, 32).double(), numeric, rtol=5e-3, atol=1e-4)


def _fused(dynamics, times, step, up=None, down=None):
    """The library's solver in fp64 end to end (``solve`` hands back fp32)."""
    steps, ends, log_xi, rate = dynamics.stage_terms(times, step, torch.float64)
    up = dynamics.up.double() if up is None else up
    down = dynamics.down.double() if down is None else down
    return Rk4ThroughDynamics.apply(dynamics.log_theta.double(), up, down, log_xi, rate, steps, ends,
                                    dynamics.activation_name)


def _autograd_rk4(f, z0, times, step):
    """A textbook 3/8-rule RK4 with autograd through every op: the reference for the fused solver."""
    out, z = [z0], z0
    for t0, t1 in zip(times[:-1], times[1:], strict=True):
        n = max(1, math.ceil((t1 - t0) / step - 1e-9))
        h = (t1 - t0) / n
        for k in range(n):
            t = t0 + k * h
            k1 = f(t, z)
            k2 = f(t + h / 3, z + h * k1 / 3)
            k3 = f(t + 2 * h / 3, z + h * (k2 - k1 / 3))
            k4 = f(t + h, z + h * (k1 - k2 + k3))
            z = z + h * (k1 + 3 * (k2 + k3) + k4) / 8
        out.append(z)
    return torch.stack(out)


def test_solver_is_fourth_order_against_the_closed_form():
    # untrained (W_down = 0): dz/dt = d/dt log ξ(t), so z(t) = log ξ(t) exactly and the 3/8 rule is a quadrature
    dynamics = ClexDynamics(32, 1e4, generator=torch.Generator().manual_seed(0))
    exact = ntk_log_frequencies(torch.tensor([[1.0], [3.0], [6.0]], dtype=torch.float64), 32, 1e4, torch.float64)
    errors = [float((_fused(dynamics, [1.0, 3.0, 6.0], dt).detach() - exact).abs().max()) for dt in (0.2, 0.1)]
    assert errors[1] < 1e-5
    assert 12 < errors[0] / errors[1] < 20  # halving the step divides the error by ≈ 2⁴


@pytest.mark.parametrize("activation", ["tanh", "silu"])
def test_fused_solver_equals_autograd_through_a_textbook_rk4(activation):
    dynamics = ClexDynamics(16, 1e4, activation=activation, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dynamics.down.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    weights = torch.randn(3, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    times = [1.0, 2.5, 4.0]  # several outputs: gradients enter the backward walk at each of them

    fused = _fused(dynamics, times, 0.1)
    (fused * weights).sum().backward()
    fused_grads = [p.grad.clone() for p in (dynamics.up, dynamics.down)]
    dynamics.zero_grad()
    reference = _autograd_rk4(dynamics, dynamics.log_theta.double(), times, 0.1)
    (reference * weights).sum().backward()

    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-12)
    for ours, theirs in zip(fused_grads, (dynamics.up.grad, dynamics.down.grad), strict=True):
        assert theirs.abs().max() > 0.1  # a gradient that could be wrong
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["tanh", "silu"])
def test_gradcheck_through_the_solver(activation):
    dynamics = ClexDynamics(8, 100.0, activation=activation, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dynamics.down.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
    up, down = dynamics.up.detach().double(), dynamics.down.detach().double()

    def as_function(u, d):
        return _fused(dynamics, [1.0, 1.5, 2.0], 0.25, u, d)

    assert torch.autograd.gradcheck(as_function, (up.requires_grad_(), down.requires_grad_()), eps=1e-6, atol=1e-5)
    # and `solve` hands the module's own parameters that gradient
    solve(dynamics, torch.tensor([1.0, 2.0]), 0.25)[-1].double().sum().backward()
    expected = torch.autograd.grad(as_function(up, down)[-1].sum(), down)[0]
    torch.testing.assert_close(dynamics.down.grad.double(), expected, rtol=1e-5, atol=1e-6)


def test_parameter_count_and_zero_init():
    dynamics = ClexDynamics(128, 1e4, amplification=1)
    assert sum(p.numel() for p in dynamics.parameters()) == 128 * 128
    assert not dynamics.down.any()


def test_torchdiffeq_backend_gives_the_same_numbers():
    pytest.importorskip("torchdiffeq")
    dynamics = ClexDynamics(32, 1e4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dynamics.down.normal_(0, 0.2, generator=torch.Generator().manual_seed(1))
    ours = frequency_table(dynamics, 6, 0.01, "rk4")
    theirs = frequency_table(dynamics, 6, 0.01, "torchdiffeq")
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


def test_bad_settings_are_clear_errors():
    with pytest.raises(RopelabError, match="activation"):
        ClexDynamics(16, 1e4, activation="relu")
    with pytest.raises(RopelabError, match="backend"):
        solve(ClexDynamics(16, 1e4), torch.tensor([1.0, 2.0]), backend="euler")
    with pytest.raises(RopelabError, match="time_dt"):
        solve(ClexDynamics(16, 1e4), torch.tensor([1.0, 2.0]), step=0.0)
    with pytest.raises(RopelabError, match="increasing"):
        solve(ClexDynamics(16, 1e4), torch.tensor([1.0, 3.0, 2.0]))
