"""Fused Bellman steps agree with the plain conv-then-max steps: same step, fixed point, gradients and symmetry.

Tolerances: float32 steps agree to 1e-5 of the output's scale (the fused matmul sums the same products in another
order); fixed points and logits after a 30-iteration solve to 1e-4 of their scale; gradients to 1e-3 relative.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

import idp_agents.planners.fused as fused
from idp_agents.implicit import FixedPointConfig
from idp_agents.planners import Planner, make_planner
from idp_agents.planners.fused import (
    TapMax,
    gru_update_inplace,
    lstm_update_inplace,
    plain_steps,
    shifted_taps,
)
from idp_agents.solvers import SolverBuffers, anderson, broyden

CASES = [
    ("id-vin", dict(l_h=8, l_q=10)),
    ("id-symvin", dict(group="c4", l_h=3, l_q=3)),
    ("id-symvin", dict(group="d4", l_h=2, l_q=3)),
    ("id-convgppn", dict(hidden=8, cell="gru")),
    ("id-convgppn", dict(hidden=8)),
]
IDS = ["vin", "symvin-c4", "symvin-d4", "convgppn-gru", "convgppn-lstm"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second thread only adds contention on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_maps(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    maps = torch.zeros(batch, 2, height, width)
    maps[:, 0] = (torch.rand(batch, height, width, generator=gen) < 0.3).float()
    rows, cols = torch.randint(height, (batch,), generator=gen), torch.randint(width, (batch,), generator=gen)
    maps[torch.arange(batch), 1, rows, cols] = 1.0
    maps[torch.arange(batch), 0, rows, cols] = 0.0
    return maps


def perturbed_planner(name: str, topology: str = "plane", seed: int = 0, **kwargs) -> Planner:
    """A small planner with random weights, VIN's zero-initialised value share small enough for the step to contract,
    so that 30 solver iterations converge and both paths' round-off cannot be amplified. No tolerances: every solve
    runs its whole budget, so both paths take the same number of steps."""
    torch.manual_seed(seed)
    kwargs = {"tol_fwd": None, "tol_bwd": None, **kwargs}
    planner = make_planner(name, topology=topology, k_fwd=30, k_bwd=20, **kwargs)
    with torch.no_grad():
        for p in planner.parameters():
            p.add_(0.2 * torch.randn_like(p))
        q_value = getattr(planner.step, "q_value", None)
        if q_value is not None:
            (q_value if isinstance(q_value, torch.nn.Parameter) else q_value.weight).mul_(0.2)
    return planner


def close(a: torch.Tensor, b: torch.Tensor, rel: float) -> bool:
    return (a - b).abs().max().item() <= rel * max(1.0, b.abs().max().item())


@pytest.mark.parametrize("topology", ["plane", "torus"])
@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_one_fused_step_equals_the_plain_step(name, kwargs, topology):
    planner = perturbed_planner(name, topology, **kwargs)
    maps = random_maps(3, 9, 7)
    with torch.no_grad():
        ctx = planner.step.encode(maps)
        z = torch.randn_like(planner.step.initial_state(ctx))
        fused_out = planner.step(z, ctx)
        with plain_steps(planner):
            plain_out = planner.step(z, ctx)
    assert fused_out.shape == z.shape
    assert close(fused_out, plain_out, 1e-5)


@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=IDS)
def test_fused_and_plain_solves_reach_the_same_fixed_point(name, kwargs):
    planner = perturbed_planner(name, **kwargs)
    maps = random_maps(4, 11, 11, seed=1)
    with torch.no_grad():
        fused_out = planner(maps)
        with plain_steps(planner):
            plain_out = planner(maps)
    assert close(fused_out.logits, plain_out.logits, 1e-4)
    assert close(fused_out.value, plain_out.value, 1e-4)
    assert close(fused_out.info.forward.final_residual, plain_out.info.forward.final_residual, 1e-3)


@pytest.mark.parametrize(("name", "kwargs"), [*CASES, ("vin", dict(l_h=8, l_q=10))], ids=[*IDS, "vin-unrolled"])
def test_fused_forward_solve_gives_the_plain_gradients(name, kwargs):
    """Training with fused steps (the no-grad forward solve, VIN's ``bellman_max`` and J^T products, ConvGPPN's
    in-place gates) gives the plain steps' gradients, implicit and unrolled."""
    maps = random_maps(3, 9, 9, seed=2)
    labels = torch.randint(0, 4, (3, 9, 9), generator=torch.Generator().manual_seed(3))
    grads = []
    for fused_steps in (True, False):
        planner = perturbed_planner(name, **kwargs)
        planner.step.fused = fused_steps
        F.cross_entropy(planner(maps).logits, labels).backward()
        grads.append([p.grad.clone() for p in planner.parameters()])
    for g_fused, g_plain in zip(*grads, strict=True):
        assert torch.isfinite(g_fused).all()
        assert (g_fused - g_plain).abs().max() <= 1e-3 * g_plain.abs().max() + 1e-6


@pytest.mark.parametrize("group", ["c4", "d4"])
def test_fused_symvin_stays_equivariant(group):
    planner = perturbed_planner("id-symvin", group=group, l_h=2, l_q=3).double()
    maps = random_maps(2, 9, 9, seed=4).double()
    with torch.no_grad():
        base = planner(maps)
        assert base.info.forward is not None
        turned = planner(torch.rot90(maps, 1, dims=(2, 3)))
    expected = torch.rot90(base.logits, 1, dims=(2, 3))[:, [3, 0, 1, 2]]  # action a moves to a + 1
    assert (turned.logits - expected).abs().max() < 1e-8 * max(1.0, base.logits.abs().max().item())
    assert (turned.value - torch.rot90(base.value, 1, dims=(1, 2))).abs().max() < 1e-8


def test_fused_path_runs_by_default_and_can_be_switched_off(monkeypatch):
    planner = perturbed_planner("id-vin", l_h=4, l_q=5)
    maps = random_maps(2, 7, 7)
    calls = []
    original = TapMax.__call__
    monkeypatch.setattr(TapMax, "__call__", lambda self, v, **kw: calls.append(1) or original(self, v, **kw))
    with torch.no_grad():
        planner(maps)
    assert len(calls) == 31  # 30 forward-solver iterations, then the output step (also without autograd)
    calls.clear()
    with torch.no_grad(), plain_steps(planner):
        planner(maps)
    assert not calls
    assert planner.step.fused  # restored after the block
    planner.step.fused = False
    with torch.no_grad():
        planner(maps)
    assert not calls
    planner.step.fused = True
    unrolled = make_planner("vin", l_h=4, l_q=5, k_fwd=3)
    unrolled(maps).logits.sum().backward()  # training: each layer's forward fused, its backward by bellman_max
    assert len(calls) == 3
    calls.clear()
    with plain_steps(unrolled):
        unrolled(maps).logits.sum().backward()
    assert not calls
    other = make_planner("id-vin", l_h=4, l_q=5)
    with torch.no_grad(), plain_steps(unrolled):
        other(maps)
    assert calls  # the switch belongs to the planner it is given, not to the process


@pytest.mark.parametrize("topology", ["plane", "torus"])
@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_shifted_taps_times_a_weight_is_a_same_convolution(topology, kernel):
    x = torch.randn(2, 3, 6, 5)
    weight = torch.randn(4, 3, kernel, kernel)
    taps = shifted_taps(x, kernel, topology, torch.empty(3 * kernel * kernel, 2 * 6 * 5))
    via_taps = (weight.flatten(1) @ taps).view(4, 2, 6, 5).transpose(0, 1)
    pad = kernel // 2
    padded = F.pad(x, (pad,) * 4, mode="circular") if topology == "torus" and pad else F.pad(x, (pad,) * 4)
    assert torch.allclose(via_taps, F.conv2d(padded, weight), atol=1e-5)


def test_tap_max_rejects_a_state_of_the_wrong_shape():
    tap_max = TapMax(torch.randn(2, 1, 5, 5), torch.randn(6, 1, 3, 3), torch.randn(6, 1, 3, 3), 6, "plane")
    with pytest.raises(ValueError, match="value state must have shape"):
        tap_max(torch.randn(2, 1, 5, 6))


def test_in_place_gru_update_equals_the_plain_one():
    x, h, z = torch.randn(2, 12, 5, 5), torch.randn(2, 12, 5, 5), torch.randn(2, 4, 5, 5)
    assert torch.allclose(gru_update_inplace(x, h.clone(), z), fused.gru_update(x, h, z), atol=1e-6)


@pytest.mark.parametrize("bound", [1.0, 0.9])
def test_in_place_lstm_update_equals_the_plain_one(bound):
    x, h, c = torch.randn(2, 16, 5, 5), torch.randn(2, 16, 5, 5), torch.randn(2, 4, 5, 5)
    assert torch.allclose(lstm_update_inplace(x, h.clone(), c, bound), fused.lstm_update(x, h, c, bound), atol=1e-6)


@pytest.mark.slow
def test_compiled_kernels_equal_the_eager_ones(monkeypatch):
    """A step's compile "1" compiles the fused kernels on the CPU too; they must give the eager results."""
    tap_max = fused.MaybeCompiled(fused._tap_max_block)
    gru = fused.MaybeCompiled(fused.gru_update)
    q_reward, weight, taps = torch.randn(12, 40), torch.randn(12, 18), torch.randn(18, 40)
    x, h, z = torch.randn(2, 12, 4, 4), torch.randn(2, 12, 4, 4), torch.randn(2, 4, 4, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a fallback is reported below as a skip
        compiled_max = tap_max(q_reward, weight, taps, 3, compile="1")
        compiled_gru = gru(x, h, z, compile="1")
    if tap_max.failed or gru.failed:
        pytest.skip("torch.compile is not available on this machine (the kernels fell back to eager)")
    assert torch.allclose(compiled_max, fused._tap_max_block(q_reward, weight, taps, 3), atol=1e-5)
    assert torch.allclose(compiled_gru, fused.gru_update(x, h, z), atol=1e-5)


def test_compile_setting_is_validated():
    with pytest.raises(ValueError, match="compile must be one of"):
        fused.compile_wanted("yes", torch.device("cpu"))
    assert not fused.compile_wanted("auto", torch.device("cpu")) and fused.compile_wanted("1", torch.device("cpu"))


@pytest.mark.parametrize("solver", [anderson, broyden])
def test_solver_buffers_are_reused_and_give_identical_solves(solver):
    buffers = SolverBuffers()
    step = torch.nn.Linear(6, 6)
    with torch.no_grad():
        step.weight.mul_(0.3)
    z0 = torch.randn(4, 6)
    first, _ = solver(lambda z: torch.tanh(step(z)), z0, 12, buffers=buffers)
    kept = [t.data_ptr() for t in next(iter(buffers.sets.values()))]
    nested = []

    def f_with_inner_solve(z: torch.Tensor) -> torch.Tensor:
        nested.append(solver(lambda y: torch.tanh(step(y)), z0, 12, buffers=buffers)[0])  # inside the outer solve
        return torch.tanh(step(z))

    second, _ = solver(f_with_inner_solve, z0, 12, buffers=buffers)
    assert torch.equal(first, second)
    assert all(torch.equal(first, inner) for inner in nested)
    assert sorted(kept) == sorted(t.data_ptr() for t in buffers.sets[next(iter(buffers.sets))])
    alone, _ = solver(lambda z: torch.tanh(step(z)), z0, 12)  # no owner: its own buffers, the same solve
    assert torch.equal(first, alone)


def test_each_planner_owns_its_solver_buffers():
    planner, other = make_planner("id-vin", l_h=4, l_q=5), make_planner("id-vin", l_h=4, l_q=5)
    with torch.no_grad():
        planner(random_maps(2, 7, 7))
    assert planner.solver_buffers.sets and not other.solver_buffers.sets
    assert not copy.deepcopy(planner).solver_buffers.sets  # a copy starts with its own


def test_reduced_precision_forward_solve_keeps_a_float32_state_and_backward():
    maps = random_maps(2, 9, 9)
    planner = perturbed_planner("id-vin", l_h=4, l_q=5)
    reference = planner(maps).logits.detach()
    planner.fixed_point.forward_dtype = "bfloat16"
    out = planner(maps)
    assert out.logits.dtype == torch.float32
    assert close(out.logits.detach(), reference, 5e-2)
    out.logits.square().mean().backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in planner.parameters())
    with pytest.raises(ValueError, match="forward_dtype"):
        FixedPointConfig(forward_dtype="int8")


@pytest.mark.parametrize("topology", ["plane", "torus"])
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize(
    "name, kwargs, channels",
    [("id-vin", {"l_h": 4, "l_q": 6}, 1), ("id-convgppn", {"hidden": 5}, 10)],  # ConvGPPN's LSTM state: [h, c]
)
def test_exact_transposed_jacobians_equal_the_plain_steps_vector_jacobian_products(
    name, kwargs, channels, topology, kernel
):
    planner = perturbed_planner(name, topology, kernel=kernel, **kwargs)
    maps = random_maps(2, 7, 6, seed=5)
    ctx = planner.step.encode(maps)
    z = torch.randn(2, channels, 7, 6).mul_(2).requires_grad_()  # beyond tanh's linear range
    w = torch.randn(2, channels, 7, 6)
    with plain_steps(planner):
        (expected,) = torch.autograd.grad(planner.step(z, ctx), z, w)
        assert planner.step.transposed_jacobian(z.detach(), ctx) is None
    product = planner.step.transposed_jacobian(z.detach(), ctx)
    assert torch.allclose(product(w), expected, atol=1e-5)


def test_convgppn_gru_takes_autograds_transposed_jacobian_products():
    planner = perturbed_planner("id-convgppn", hidden=5, cell="gru")
    maps = random_maps(2, 7, 6, seed=5)
    assert planner.step.transposed_jacobian(torch.randn(2, 5, 7, 6), planner.step.encode(maps)) is None


def test_fold_taps_is_the_transpose_of_shifted_taps():
    """<fold(t), x> = <t, taps(x)> for every topology: the backward of the fused VIN step is exact."""
    for topology in ("plane", "torus"):
        x, t = torch.randn(2, 3, 5, 4), torch.randn(2, 3 * 9, 5 * 4)
        taps = shifted_taps(x, 3, topology, torch.empty(27, 2 * 5 * 4)).view(27, 2, 20).transpose(0, 1)
        lhs = (fused.fold_taps(t, 5, 4, 3, topology) * x).sum()
        assert torch.allclose(lhs, (t * taps).sum(), atol=1e-4)
