"""Fixed points that are really reached: bounded value filters make VIN/SymVIN contractions, the spectral radius
estimate is right, a solve that misses its tolerance is reported, and trained default planners stay contractive."""

import warnings

import numpy as np
import pytest
import torch

from idp_agents.implicit import FixedPointConfig, NonConvergenceWarning, solve_fixed_point
from idp_agents.jacobian import spectral_radius
from idp_agents.planner_input import task_tensors
from idp_agents.planners import make_planner
from idp_agents.planners.base import bounded_value_filter
from idp_agents.training import FixedPointStats, planner_loss
from idp_envs.tasks import sample_maze_tasks


def random_maps(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    obstacles = (torch.rand(batch, size, size, generator=gen) < 0.3).float()
    goal = torch.zeros(batch, size, size)
    goal[:, size // 2, size // 2] = 1
    obstacles[:, size // 2, size // 2] = 0
    return torch.stack([obstacles, goal], dim=1)


def test_bounded_value_filter_caps_every_row_and_keeps_small_ones():
    weight = torch.randn(6, 2, 3, 3)
    weight[0] *= 1e-3  # already inside the ball: untouched
    bounded = bounded_value_filter(weight, 0.9)
    norms = bounded.abs().flatten(1).sum(dim=1)
    assert (norms <= 0.9 + 1e-6).all()
    torch.testing.assert_close(bounded[0], weight[0])
    assert bounded_value_filter(weight, None) is weight


def test_bounded_value_filter_scales_a_field_as_one():
    weight = torch.randn(8, 4, 3, 3)
    bounded = bounded_value_filter(weight, 0.5, rows_per_field=4)
    ratio = (bounded / weight).flatten(1)[:, 0].view(2, 4)
    torch.testing.assert_close(ratio, ratio[:, :1].expand(-1, 4))


@pytest.mark.parametrize("name", ["vin", "symvin"])
@pytest.mark.parametrize("topology", ["plane", "torus"])
def test_vin_family_step_is_a_discount_contraction_in_the_max_norm_whatever_its_weights(name, topology):
    torch.manual_seed(0)
    planner = make_planner(name, topology=topology, l_h=8, l_q=6, discount=0.8)
    with torch.no_grad():
        for p in planner.parameters():
            p.normal_(0, 3.0)  # far outside any trained range
        ctx = planner.step.encode(random_maps(3, 9))
        z = planner.step.initial_state(ctx)
        v1, v2 = torch.randn_like(z) * 10, torch.randn_like(z) * 10
        for fused in (True, False):
            planner.step.fused = fused
            gap = (planner.step(v1, ctx) - planner.step(v2, ctx)).abs().flatten(1).amax(dim=1)
            assert (gap <= 0.8 * (v1 - v2).abs().flatten(1).amax(dim=1) + 1e-4).all()


def test_unbounded_vin_is_not_a_contraction_with_large_weights():
    torch.manual_seed(0)
    planner = make_planner("vin", l_h=8, l_q=6, discount=None)
    with torch.no_grad():
        planner.step.q_value.normal_(0, 3.0)
    radius = planner.spectral_radius(random_maps(2, 9))
    assert (radius > 1).all()


def test_spectral_radius_of_a_linear_map_per_sample():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    eigenvalues = torch.tensor([0.9, -0.5, 0.3, 0.2, 0.1, 0.05], dtype=torch.float64)
    a = q @ torch.diag(eigenvalues) @ torch.linalg.inv(q)
    scales = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)[:, None]
    estimate = spectral_radius(lambda z: scales * (z @ a.T), torch.zeros(3, 6, dtype=torch.float64), 200)
    torch.testing.assert_close(estimate, 0.9 * scales[:, 0], rtol=1e-3, atol=0)


def test_a_solve_that_misses_its_tolerance_is_warned_about_and_counted():
    config = FixedPointConfig(
        k_fwd=3, tol_fwd=1e-10, solver_fwd="forward", k_bwd=2, tol_bwd=1e-10, drop_unconverged=False
    )  # kept in the gradient, so that the backward solve has something to miss
    x = torch.randn(4, 5, requires_grad=True)
    with pytest.warns(NonConvergenceWarning) as caught:
        z, info = solve_fixed_point(lambda z: 0.99 * z + x, torch.zeros(4, 5), config)
        z.sum().backward()
    assert {"forward", "backward"} <= {w.message.args[0].split()[1] for w in caught}
    assert not info.forward.converged.any() and not info.backward[0].converged.any()
    stats = FixedPointStats(torch.device("cpu"))
    stats.add(info)
    summary = stats.summary()
    assert summary["fwd_nonconverged"] == 1.0 and summary["bwd_nonconverged"] == 1.0
    assert summary["fwd_over_cap"] == 1.0  # no restricted step to continue them with
    assert summary["fwd_residual_max"] == pytest.approx(info.forward.final_residual.max().item())


def test_a_converged_solve_is_not_warned_about_and_counted_as_converged():
    config = FixedPointConfig(k_fwd=200, tol_fwd=1e-6, solver_fwd="anderson")
    x = torch.randn(4, 5, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonConvergenceWarning)
        _, info = solve_fixed_point(lambda z: 0.5 * z + x, torch.zeros(4, 5, dtype=torch.float64), config)
    stats = FixedPointStats(torch.device("cpu"))
    stats.add(info)
    assert stats.summary()["fwd_nonconverged"] == 0.0
    assert np.isnan(stats.summary()["bwd_residual_mean"])  # no backward ran


def maze_batch(count: int, size: int, seed: int) -> dict:
    return task_tensors(sample_maze_tasks(count, size, np.random.default_rng(seed)), torch.device("cpu"))


@pytest.mark.parametrize("name", ["id-vin", "id-convgppn", "id-symvin"])
def test_default_implicit_planners_stay_contractive_while_they_learn(name):
    """A short training run with the defaults (only the widths shrunk for time): the loss falls, the forward solves
    meet their tolerance, and the step's spectral radius on a probe batch stays below 1.

    Every VIN-family solve converges and its radius stays below 1 (its step is a contraction by construction).
    ID-ConvGPPN's LSTM step is held near 1 by a penalty, not below it by construction: 1-3% of its solves end above
    tolerance, on maps where the learned step sits at spectral radius ~1 (docs/results.md: 1.9-2.85% at the last
    epoch on 15x15 mazes), here 0 or 1 of the 96 solves. Its largest probe radius after this run ranged over
    0.944-1.005 in eight runs (seeds 0-3, autograd's or the exact J^T products in the backward solve: rounding moves
    it), so it is held to what was measured, most maps below 1 and none past 1.05 (a lost fixed point: 1.3-1.4
    without the penalty), not to the strict bound, which is issue 11's open criterion for it."""
    torch.manual_seed(0)
    data = maze_batch(96, 9, seed=0)
    widths = {"id-vin": dict(l_h=16, l_q=16), "id-convgppn": dict(hidden=16), "id-symvin": dict(l_h=4, l_q=4)}
    planner = make_planner(name, **widths[name])
    optimizer = torch.optim.RMSprop(planner.parameters(), lr=1e-3)
    losses, stats = [], FixedPointStats(torch.device("cpu"))
    for epoch in range(4):
        for i in range(0, 96, 16):
            output = planner(data["maps"][i : i + 16])
            loss = planner_loss(output, data["optimal_actions"][i : i + 16])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(planner.parameters(), 40)
            optimizer.step()
            if epoch == 3:
                stats.add(output.info)
            losses.append(loss.item())
    assert np.mean(losses[-6:]) < np.mean(losses[:6])
    assert stats.summary()["fwd_nonconverged"] <= (0.03 if name == "id-convgppn" else 0.0)
    radius = planner.spectral_radius(data["maps"][:8])
    if name == "id-convgppn":
        assert (radius < 1).float().mean() >= 0.75 and radius.max() < 1.05
    else:
        assert (radius < 1).all()


@pytest.mark.parametrize("topology", ["plane", "torus"])
def test_bounded_convgppn_step_is_non_expansive_on_its_state_space_whatever_its_weights(topology):
    """With ``contraction`` k the Lipschitz bound u + (1 - u) k < 1 holds per cell for states in [-1, 1]."""
    torch.manual_seed(0)
    planner = make_planner("id-convgppn", topology=topology, hidden=8, cell="gru", contraction=0.9)
    with torch.no_grad():
        for p in planner.parameters():
            p.normal_(0, 3.0)
        ctx = planner.step.encode(random_maps(3, 9))
        h1 = torch.rand_like(planner.step.initial_state(ctx)) * 2 - 1
        for scale in (1.0, 1e-3):  # far apart, and close (the local Jacobian)
            h2 = (h1 + scale * torch.randn_like(h1)).clamp(-1, 1)
            gap = (planner.step(h1, ctx) - planner.step(h2, ctx)).abs().flatten(1).amax(dim=1)
            # an update gate that rounds to 1 copies its cell (factor exactly 1): non-expansive, not strict
            assert (gap <= (h1 - h2).abs().flatten(1).amax(dim=1) * (1 + 1e-6)).all()
