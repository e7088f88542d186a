"""The CLEX ODE: closed forms, the solver's order, gradients, and the optional torchdiffeq backend."""

from __future__ import annotations

import math

import pytest
import torch

from ropelab.clex.ode import (
    ClexDynamics,
    frequency_table,
    ntk_log_frequencies,
    ntk_log_frequency_rate,
    rk4_solve,
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


def test_rk4_matches_a_closed_form_and_is_fourth_order():
    # dz/dt = z·cos(t)  →  z(t) = z0 · exp(sin t − sin t0)
    z0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    times = torch.tensor([1.0, 3.0, 6.0], dtype=torch.float64)
    exact = torch.stack([z0 * math.exp(math.sin(float(t)) - math.sin(1.0)) for t in times])

    def f(t, z):
        return z * torch.cos(t.double())

    errors = [float((rk4_solve(f, z0, times, dt) - exact).abs().max()) for dt in (0.2, 0.1)]
    assert errors[1] < 1e-5
    assert 10 < errors[0] / errors[1] < 25  # halving the step divides the error by ≈ 2⁴


def test_gradients_flow_through_the_solver():
    dynamics = ClexDynamics(8, 100.0, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dynamics.down.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
    z0 = dynamics.log_theta.clone()
    z0 = z0.double()
    up, down = dynamics.up.detach().double(), dynamics.down.detach().double()

    def as_function(u, d):  # gradcheck needs the solution as a function of the parameters
        return rk4_solve(lambda t, z: _rhs(dynamics, t, z, u, d), z0, torch.tensor([1.0, 2.0]), 0.25)[-1]

    assert torch.autograd.gradcheck(as_function, (up.requires_grad_(), down.requires_grad_()), eps=1e-6, atol=1e-5)
    # and the module's own parameters receive that gradient
    rk4_solve(dynamics, z0, torch.tensor([1.0, 2.0]), 0.25)[-1].sum().backward()
    expected = torch.autograd.grad(as_function(up, down).sum(), down)[0]
    torch.testing.assert_close(dynamics.down.grad.double(), expected, rtol=1e-5, atol=1e-6)


def _rhs(dynamics, t, z, up, down):
    log_xi, rate = dynamics.time_terms(torch.as_tensor(t), z.dtype)
    return dynamics.activation((z + log_xi) @ up) @ down + rate


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
