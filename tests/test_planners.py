"""The six registered planners: shapes, gradients, fixed points, padding, registry and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from idp_agents.implicit import FixedPointConfig, FixedPointInfo
from idp_agents.planners import PLANNERS, ConvGPPNStep, Planner, SymVINStep, VINStep, make_planner
from idp_agents.planners.base import PlannerOutput, channel_max
from idp_agents.planners.vin import set_value_iteration
from idp_agents.training import autograd_saved_bytes, count_host_syncs_and_ops, planner_loss
from idp_envs import grid

SMALL = {"vin": dict(l_h=8, l_q=8), "convgppn": dict(hidden=8), "symvin": dict(l_h=3, l_q=3)}
MOVES = tuple(map(tuple, grid.ACTION_DELTAS.tolist()))  # N, W, S, E


def randomise_value_share(planner: Planner, std: float = 0.1) -> Planner:
    """VIN and SymVIN start with a zero value share of Q (a step constant in v); give it random weights."""
    q_value = getattr(planner.step, "q_value", None)
    if q_value is not None:
        weight = q_value if isinstance(q_value, torch.nn.Parameter) else q_value.weight
        with torch.no_grad():
            weight.normal_(std=std)
    return planner


def small_planner(name: str, **kwargs) -> Planner:
    """A planner with few channels and a step that depends on its state."""
    kwargs.setdefault("k_fwd", 10)
    kwargs.setdefault("k_bwd", 10)
    return randomise_value_share(make_planner(name, **SMALL[name.removeprefix("id-")], **kwargs))


def random_maps(batch: int, height: int, width: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Random obstacles (30 %) and one free goal cell per map."""
    gen = torch.Generator().manual_seed(seed)
    obstacles = (torch.rand(batch, height, width, generator=gen) < 0.3).to(dtype)
    goal = torch.zeros(batch, height, width, dtype=dtype)
    rows = torch.randint(height, (batch,), generator=gen)
    cols = torch.randint(width, (batch,), generator=gen)
    goal[torch.arange(batch), rows, cols] = 1.0
    obstacles[torch.arange(batch), rows, cols] = 0.0
    return torch.stack([obstacles, goal], dim=1)


def bfs_distances(obstacles: np.ndarray, goal: tuple[int, int], torus: bool) -> np.ndarray:
    """Steps to the goal from every cell (-1 where unreachable), for checking hand-set VIN weights."""
    topology = "torus" if torus else "plane"
    return grid.bfs_distances(obstacles[None].astype(np.uint8), np.array([goal]), topology)[0]


@pytest.mark.parametrize("name", sorted(PLANNERS))
@pytest.mark.parametrize("shape", [(9, 9), (15, 15), (8, 11)])
def test_forward_shapes_and_info(name, shape):
    planner = small_planner(name)
    maps = random_maps(3, *shape)
    out = planner(maps)
    assert out.logits.shape == (3, 4, *shape)
    assert out.value.shape == (3, *shape)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.value).all()
    assert isinstance(out.info, FixedPointInfo)
    assert planner.fixed_point.mode == ("implicit" if name.startswith("id-") else "unrolled")
    assert (out.info.forward is not None) == name.startswith("id-")


@pytest.mark.parametrize("name", sorted(PLANNERS))
def test_train_step_gives_finite_gradients_and_moves_every_parameter(name):
    torch.manual_seed(0)
    planner = small_planner(name)
    optimiser = torch.optim.RMSprop(planner.parameters(), lr=1e-3)
    maps = random_maps(4, 9, 9, seed=1)
    labels = torch.randint(4, (4, 9, 9), generator=torch.Generator().manual_seed(2))
    free = maps[:, 0] == 0
    before = {n: p.detach().clone() for n, p in planner.named_parameters()}
    out = planner(maps)
    loss = F.cross_entropy(out.logits, labels, reduction="none")[free].mean()
    optimiser.zero_grad()
    loss.backward()
    assert len(out.info.backward) == (1 if name.startswith("id-") else 0)
    for n, p in planner.named_parameters():
        assert p.grad is not None, f"{n} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{n} has a non-finite gradient"
    optimiser.step()
    unchanged = [n for n, p in planner.named_parameters() if torch.equal(p.detach(), before[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"


def contractive_vin(topology: str = "plane", **fixed_point) -> Planner:
    """ID-VIN whose value share of Q has L1 norm 0.5 per channel: the step is a 0.5-contraction in max norm.

    Solved to round-off (tolerances 1e-13) unless ``fixed_point`` says otherwise."""
    torch.manual_seed(3)
    fixed_point = {"tol_fwd": 1e-13, "tol_bwd": 1e-13, **fixed_point}
    planner = randomise_value_share(make_planner("id-vin", topology=topology, l_h=8, l_q=8, **fixed_point)).double()
    with torch.no_grad():
        w = planner.step.q_value
        w.mul_(0.5 / w.abs().sum(dim=(1, 2, 3), keepdim=True))
    return planner


@pytest.mark.parametrize("solver", ["forward", "anderson"])
def test_id_vin_reaches_the_fixed_point_of_a_contractive_step(solver):
    planner = contractive_vin(k_fwd=60, solver_fwd=solver)
    maps = random_maps(3, 9, 9, seed=4, dtype=torch.float64)
    with torch.no_grad():
        out = planner(maps)
        ctx = planner.step.encode(maps)
        v = out.value[:, None]
        residual = (planner.step(v, ctx) - v).abs().max() / v.abs().max()
    assert residual < 1e-8
    assert out.info.forward.final_residual.max() < 1e-8


def test_unrolled_vin_agrees_with_id_vin_when_the_step_contracts():
    implicit = contractive_vin(k_fwd=60)
    unrolled = make_planner("vin", l_h=8, l_q=8, k_fwd=60).double()
    unrolled.load_state_dict(implicit.state_dict())
    maps = random_maps(2, 8, 11, seed=5, dtype=torch.float64)
    torch.testing.assert_close(unrolled(maps).logits, implicit(maps).logits, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name", ["vin", "convgppn"])
def test_trace_steps_through_the_unrolled_forward_and_measures_each_residual(name):
    """The viewer's solve, iterate by iterate: its last iterate is the unrolled planner's output, its residuals are
    the relative change of each step, and without ``every`` it keeps the last iterate alone."""
    planner = small_planner(name, k_fwd=12) if name == "convgppn" else contractive_vin(k_fwd=12).float()
    planner.fixed_point = FixedPointConfig(mode="unrolled", k_fwd=12)
    maps = random_maps(2, 7, 9, seed=8)
    with torch.no_grad():
        out = planner(maps)
        trace = planner.trace(maps, 12)
        last = planner.trace(maps, 12, every=False)
        ctx = planner.step.encode(maps)
        z1 = planner.step(planner.step.initial_state(ctx), ctx)
    assert trace.values.shape == (13, 2, 7, 9) and trace.logits.shape == (13, 2, 4, 7, 9)
    assert trace.residuals.shape == (12, 2)
    torch.testing.assert_close(trace.logits[-1], out.logits)
    torch.testing.assert_close(trace.values[1], planner.step.value_map(z1))
    torch.testing.assert_close(last.logits[0], out.logits)
    torch.testing.assert_close(last.residuals, trace.residuals)
    assert last.values.shape == (1, 2, 7, 9)
    if name == "vin":  # a contraction: the steps shrink
        assert (trace.residuals[-1] < trace.residuals[1]).all()


def parameter_gradient(planner: Planner, maps: torch.Tensor) -> torch.Tensor:
    """All parameters' gradients of a fixed non-linear function of the logits, flattened into one vector."""
    planner.zero_grad()
    planner(maps).logits.sin().sum().backward()
    return torch.cat([p.grad.flatten() for p in planner.parameters()])


def test_id_vin_gradients_match_a_long_unrolled_vin_when_the_step_contracts():
    implicit = contractive_vin(k_fwd=60, k_bwd=60, solver_bwd="forward")
    unrolled = make_planner("vin", l_h=8, l_q=8, k_fwd=60).double()
    unrolled.load_state_dict(implicit.state_dict())
    maps = random_maps(2, 9, 9, seed=8, dtype=torch.float64)
    implicit_grad, unrolled_grad = (parameter_gradient(planner, maps) for planner in (implicit, unrolled))
    torch.testing.assert_close(implicit_grad, unrolled_grad, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("name", ["id-vin", "id-symvin"])
def test_untrained_implicit_planners_start_at_their_fixed_point(name):
    """The value share of Q starts at zero (as in the published VIN), so the untrained step is constant in v."""
    out = make_planner(name, k_fwd=5, tol_fwd=1e-6)(random_maps(2, 15, 15))
    assert out.info.forward.converged.all()


def test_jacobian_regulariser_setting_reaches_the_fixed_point_layer():
    out = small_planner("id-vin", jac_reg_weight=0.5)(random_maps(2, 9, 9))
    assert out.info.jac_loss is not None and out.info.jac_loss.dim() == 0 and torch.isfinite(out.info.jac_loss)


@pytest.mark.parametrize("discount", [None, 0.95])
@pytest.mark.parametrize("topology", ["plane", "torus"])
def test_hand_set_vin_is_value_iteration_with_actions_in_order_n_w_s_e(topology, discount):
    """Pins the action order and the padding: v = -BFS distance (discounted: -(1 - g^d) / (1 - g)), and the argmax
    is a shortest-path move. The bounded value filter turns the hand-set filter (L1 norm 1) into discounted VI."""
    planner = make_planner("vin", topology=topology, l_h=2, l_q=5, k_fwd=80, kernel=3, discount=discount)
    set_value_iteration(planner.step)
    rng = np.random.default_rng(6)
    obstacles = (rng.random((11, 13)) < 0.25).astype(np.float32)
    if topology == "plane":
        obstacles[[0, -1], :] = 1.0  # a wall keeps zero-padded borders out of the argmax
        obstacles[:, [0, -1]] = 1.0
    goal = (5, 6)
    obstacles[goal] = 0.0
    maps = torch.zeros(1, 2, 11, 13)
    maps[0, 0] = torch.from_numpy(obstacles)
    maps[0, 1][goal] = 1.0
    with torch.no_grad():
        out = planner(maps)
    dist = bfs_distances(obstacles, goal, torus=topology == "torus")
    reachable = dist > 0
    d = dist[dist >= 0].astype(np.float64)
    expected = -d if discount is None else -(1 - discount**d) / (1 - discount)
    np.testing.assert_allclose(out.value[0].numpy()[dist >= 0], expected, atol=1e-4)
    action = out.logits[0].argmax(dim=0).numpy()
    for r, c in zip(*np.nonzero(reachable), strict=True):
        dr, dc = MOVES[action[r, c]]
        nr, nc = (r + dr) % 11, (c + dc) % 13
        assert dist[nr, nc] == dist[r, c] - 1, f"cell {(r, c)} takes action {action[r, c]}"


@pytest.mark.parametrize("name", sorted(PLANNERS))
def test_torus_planners_commute_with_circular_shifts(name):
    planner = small_planner(name, topology="torus").double()
    maps = random_maps(2, 9, 11, seed=7, dtype=torch.float64)
    shift = (3, -4)
    with torch.no_grad():
        shifted = planner(torch.roll(maps, shift, dims=(2, 3))).logits
        expected = torch.roll(planner(maps).logits, shift, dims=(2, 3))
    assert (shifted - expected).abs().max() < 1e-8


@pytest.mark.parametrize("name", ["vin", "convgppn", "symvin"])
def test_plane_planners_do_not_commute_with_circular_shifts(name):
    planner = small_planner(name).double()
    maps = random_maps(2, 9, 11, seed=7, dtype=torch.float64)
    with torch.no_grad():
        shifted = planner(torch.roll(maps, (3, -4), dims=(2, 3))).logits
        expected = torch.roll(planner(maps).logits, (3, -4), dims=(2, 3))
    assert (shifted - expected).abs().max() > 1e-4


def test_make_planner_routes_fixed_point_settings_and_step_hyperparameters():
    planner = make_planner("id-vin", k_fwd=7, k_bwd=3, solver_fwd="forward", tol_fwd=1e-5, l_h=4, kernel=5)
    assert planner.fixed_point == FixedPointConfig(
        mode="implicit", k_fwd=7, k_bwd=3, solver_fwd="forward", tol_fwd=1e-5
    )
    assert isinstance(planner.step, VINStep) and planner.step.l_h == 4 and planner.step.kernel == 5
    unrolled = make_planner("convgppn", fixed_point=FixedPointConfig(mode="implicit", k_fwd=5), hidden=6)
    assert unrolled.fixed_point.mode == "unrolled" and unrolled.fixed_point.k_fwd == 5
    assert isinstance(unrolled.step, ConvGPPNStep) and unrolled.step.hidden == 6
    sym = make_planner("id-symvin", topology="torus", group="d4")
    assert isinstance(sym.step, SymVINStep) and sym.topology == "torus" and sym.step.order == 8


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("gppn", {}, "unknown planner"),
        ("vin", {"hidden": 4}, "unknown hyperparameters"),
        ("convgppn", {"l_h": 4}, "unknown hyperparameters"),
        ("vin", {"mode": "implicit"}, "mode is set by the planner name"),
        ("vin", {"topology": "sphere"}, "topology"),
        ("vin", {"kernel": 4}, "kernel"),
        ("convgppn", {"hidden": 0}, "hidden"),
        ("convgppn", {"cell": "rnn"}, "cell"),
        ("id-convgppn", {"cell": "lstm", "contraction": 0.9}, "contraction bounds the GRU"),
        ("id-convgppn", {"cell": "gru", "forget_bound": 0.9}, "forget_bound bounds the LSTM"),
        ("id-convgppn", {"cell": "lstm", "forget_bound": 1.5}, "forget_bound"),
        ("id-convgppn", {"cell": "lstm", "forget_bound": 0}, "forget_bound"),
        ("symvin", {"group": "c8"}, "group"),
    ],
)
def test_make_planner_rejects_bad_arguments(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_planner(name, **kwargs)


@pytest.mark.parametrize("topology", ["plane", "torus"])
def test_convgppn_lstm_step_is_an_lstm_cell_in_every_grid_cell(topology):
    """With 1x1 filters and no forget bound the ConvLSTM step is torch's LSTMCell applied to each cell's reward
    features and state."""
    torch.manual_seed(0)
    planner = make_planner("convgppn", topology=topology, hidden=5, kernel=1, cell="lstm", forget_bound=1.0).double()
    step = planner.step
    reference = torch.nn.LSTMCell(5, 5).double()
    with torch.no_grad():
        reference.weight_ih.copy_(step.input_gates.weight[:, :, 0, 0])
        reference.bias_ih.copy_(step.input_gates.bias)
        reference.weight_hh.copy_(step.hidden_gates.weight[:, :, 0, 0])
        reference.bias_hh.copy_(step.hidden_gates.bias)
        maps = random_maps(2, 6, 7, seed=3, dtype=torch.float64)
        ctx = step.encode(maps)
        z = torch.randn(2, 10, 6, 7, dtype=torch.float64)
        out = step(z, ctx)
        cells = lambda x: x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])  # noqa: E731
        h, c = reference(cells(step.encoder(maps)), (cells(z[:, :5]), cells(z[:, 5:])))
    assert step.initial_state(ctx).shape == (2, 10, 6, 7)
    torch.testing.assert_close(cells(out[:, :5]), h)
    torch.testing.assert_close(cells(out[:, 5:]), c)
    torch.testing.assert_close(step.head(out, ctx), step.policy(out[:, :5]))


@pytest.mark.parametrize("bound", [1.0, 0.9, 0.5])
def test_convgppn_lstm_forget_bound_caps_the_cell_states_memory(bound):
    """A forget gate saturated at 1 keeps any cell state: the step has a radius-1 mode and no unique fixed point.
    The bound b scales the gate into (0, b), so the cell state decays by at least b per step."""
    planner = make_planner("id-convgppn", hidden=4, cell="lstm", forget_bound=bound).double()
    with torch.no_grad():
        planner.step.hidden_gates.weight.zero_()  # the gates see only the map: dc'/dc = f, the radius is max f
        planner.step.hidden_gates.bias[4:8] = 30.0  # forget pre-activations: sigmoid = 1 to round-off
    radius = planner.spectral_radius(random_maps(2, 7, 7, seed=2, dtype=torch.float64), iterations=100).max()
    assert radius == pytest.approx(bound, abs=1e-6)
    assert make_planner("convgppn", cell="lstm").step.forget_bound == 0.9


def test_id_convgppn_lstm_gradients_match_a_long_unrolled_lstm_at_its_fixed_point():
    """The cell state c is part of the fixed point: the implicit gradient through [h, c] is the unrolled one."""
    torch.manual_seed(1)
    implicit = make_planner(
        "id-convgppn",
        hidden=4,
        cell="lstm",
        k_fwd=200,
        tol_fwd=1e-12,
        k_bwd=200,
        tol_bwd=1e-12,
        spectral_reg_weight=0.0,
        jac_reg_unconverged=None,
    ).double()
    unrolled = make_planner("convgppn", hidden=4, cell="lstm", k_fwd=200).double()
    unrolled.load_state_dict(implicit.state_dict())
    maps = random_maps(2, 7, 7, seed=6, dtype=torch.float64)
    implicit_grad, unrolled_grad = (parameter_gradient(planner, maps) for planner in (implicit, unrolled))
    assert implicit.spectral_radius(maps).max() < 0.9
    torch.testing.assert_close(implicit_grad, unrolled_grad, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize(
    "maps",
    [
        torch.zeros(2, 9, 9),
        torch.zeros(2, 3, 9, 9),
        torch.zeros(2, 1, 2, 9, 9),
        torch.zeros(0, 2, 9, 9),
        torch.zeros(2, 2, 9, 9, dtype=torch.uint8),
        np.zeros((2, 2, 9, 9), dtype=np.float32),
    ],
    ids=["3d", "3-channels", "5d", "empty-batch", "uint8", "numpy"],
)
@pytest.mark.parametrize("name", ["vin", "id-convgppn", "symvin"])
def test_bad_map_input_raises_value_error(name, maps):
    with pytest.raises(ValueError, match="maps"):
        small_planner(name)(maps)


def test_channel_max_matches_amax_and_its_gradient_without_ties():
    x = torch.randn(3, 7, 4, 5, dtype=torch.float64, requires_grad=True)
    out = channel_max(x)
    torch.testing.assert_close(out, x.amax(dim=1, keepdim=True))
    assert torch.autograd.gradcheck(channel_max, (x,))
    # double backward (the Jacobian regulariser differentiates a vector-Jacobian product)
    assert torch.autograd.gradgradcheck(channel_max, (x,))


def saved_bytes_per_layer(name: str, k: int, **hyper) -> int:
    """Bytes the unrolled planner's autograd graph keeps for backward, per layer (the difference of two depths)."""

    def saved(depth: int) -> int:
        torch.manual_seed(0)
        planner = make_planner(name, k_fwd=depth, **hyper)
        return autograd_saved_bytes(lambda: planner(torch.rand(2, 2, 9, 9)))

    return (saved(2 * k) - saved(k)) // k


@pytest.mark.parametrize("name", ["vin", "symvin"])
def test_unrolled_vin_family_keeps_the_argmax_not_q_for_each_layer(name):
    # Per layer: the value map the convolution needs (float32) and the argmax (one byte); never Q itself (l_q
    # channels per cell), which amax's backward would keep.
    l_q = 40
    hyper = {"l_q": l_q} if name == "vin" else {"l_q": 10}
    per_layer = saved_bytes_per_layer(name, 5, **hyper)
    cells = 2 * 9 * 9
    order = 1 if name == "vin" else 4
    q_bytes = cells * l_q * 4
    assert per_layer < q_bytes / 2
    assert per_layer <= cells * order * (4 + 1)


def counted_training_step(planner: Planner, maps: torch.Tensor, optimal: torch.Tensor) -> tuple[int, PlannerOutput]:
    """Host synchronisations of one training step (forward, training loss, backward) and the planner's output."""
    outputs = []

    def step():
        outputs.append(planner(maps))
        planner_loss(outputs[0], optimal).backward()

    syncs, _ = count_host_syncs_and_ops(step)
    return syncs, outputs[0]


@pytest.mark.parametrize("name", ["id-vin", "id-convgppn", "id-symvin"])
def test_implicit_training_step_synchronises_twice_with_or_without_tolerances(name):
    """A training step reads the host twice, the forward and the backward solve's flags (one transfer each), and
    nothing more: convergence checks stop a solve without a synchronising read."""
    maps = random_maps(4, 9, 9)
    optimal = F.one_hot(torch.randint(4, (4, 9, 9), generator=torch.Generator().manual_seed(0)), 4)
    optimal = optimal.permute(0, 3, 1, 2).bool()
    for tol in (None, 1e-4):
        planner = small_planner(name, k_fwd=12, k_bwd=12, tol_fwd=tol, tol_bwd=tol)
        syncs, output = counted_training_step(planner, maps, optimal)
        info = output.info
        checks = len(info.forward.residuals) + sum(len(b.residuals) for b in info.backward)
        assert checks > 2 and syncs == 2  # one read per check would make more


@pytest.mark.parametrize("name", ["id-vin", "id-convgppn", "id-symvin"])
def test_stragglers_are_solved_apart_and_leave_the_rest_of_the_batch_alone(name):
    """With a forward cap too small for some maps, the continuation brings those alone to the tolerance, the other
    samples' outputs are unchanged, and a training step reads the host three times: the number of stragglers, the
    merged solve's flags and the backward solve's."""
    maps = random_maps(6, 9, 9)
    optimal = F.one_hot(torch.randint(4, (6, 9, 9), generator=torch.Generator().manual_seed(0)), 4)
    optimal = optimal.permute(0, 3, 1, 2).bool()
    planner = small_planner(name, k_fwd=4, tol_fwd=None, k_fwd_stragglers=0)
    with torch.no_grad():  # 4 iterations, one check: a tolerance between the residuals leaves half the maps out
        residuals = planner(maps).info.forward.final_residual.sort().values
    planner.fixed_point.tol_fwd = (residuals[2] + residuals[3]).item() / 2
    with pytest.warns(RuntimeWarning, match="forward"):
        before = planner(maps)
    missed = ~before.info.forward.converged
    assert missed.sum() == 3
    planner.fixed_point.k_fwd_stragglers = 300
    syncs, after = counted_training_step(planner, maps, optimal)
    assert after.info.forward.converged.all() and after.info.forward.iterations > 4
    assert torch.equal(after.logits[~missed].detach(), before.logits[~missed].detach())
    assert syncs == 3


def test_a_seeded_symvin_has_the_same_weights_whether_or_not_its_bases_were_cached():
    """Building e2cnn's bases (once per process) must not consume the caller's random draws."""
    import numpy as np

    from idp_agents.planners.symvin import steerable_basis

    states = []
    for clear in (True, False):
        if clear:
            steerable_basis.cache_clear()
        torch.manual_seed(0)
        np.random.seed(0)
        planner = make_planner("symvin", group="d4", l_h=2, l_q=2)
        states.append((planner.state_dict(), torch.rand(1).item(), np.random.rand()))
    (first, torch_after, numpy_after), (second, torch_again, numpy_again) = states
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (torch_after, numpy_after) == (torch_again, numpy_again)
