"""SymVIN's symmetry: rotating (and, for D4, flipping) the map rotates the logits and permutes the actions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from idp_agents.planners import SteerableConv, make_planner
from idp_agents.planners.symvin import GROUP_ORDERS, steerable_basis


def symvin(name: str, **kwargs):
    """A small SymVIN whose value share of Q (zero at initialisation) has random weights."""
    planner = make_planner(name, l_h=3, l_q=4, **kwargs)
    with torch.no_grad():
        planner.step.q_value.weight.normal_(std=0.2)
    return planner.double()


def random_maps(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    maps = torch.zeros(batch, 2, height, width, dtype=torch.float64)
    maps[:, 0] = (torch.rand(batch, height, width, generator=gen) < 0.3).double()
    maps[torch.arange(batch), 1, torch.randint(height, (batch,), generator=gen), 2] = 1.0
    maps[:, 0] *= 1 - maps[:, 1]
    return maps


def transform_map(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """The group element r^k s^flip acting on a (B, C, H, W) grid: first a left-right flip, then k CCW quarter turns."""
    if flip:
        x = torch.flip(x, dims=(3,))
    return torch.rot90(x, k, dims=(2, 3))


def transform_logits(logits: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Move the logits with the map and relabel the actions: a flip swaps W and E, a quarter turn sends a to a+1."""
    moved = transform_map(logits, k, flip)
    relabelled = torch.empty_like(moved)
    for a in range(4):
        relabelled[:, ((-a if flip else a) + k) % 4] = moved[:, a]
    return relabelled


def elements(group: str) -> list[tuple[int, bool]]:
    return [(k, flip) for flip in ([False, True] if group == "d4" else [False]) for k in range(4)]


def equivariance_errors(planner, maps: torch.Tensor, group_elements) -> list[float]:
    with torch.no_grad():
        base = planner(maps)
        errors = []
        for k, flip in group_elements:
            out = planner(transform_map(maps, k, flip))
            errors.append((out.logits - transform_logits(base.logits, k, flip)).abs().max().item())
            errors.append((out.value - transform_map(base.value[:, None], k, flip)[:, 0]).abs().max().item())
    return errors


@pytest.mark.parametrize("topology", ["plane", "torus"])
@pytest.mark.parametrize("group", ["c4", "d4"])
@pytest.mark.parametrize("name", ["symvin", "id-symvin"])
def test_symvin_is_equivariant(name, group, topology):
    torch.manual_seed(0)
    planner = symvin(name, group=group, topology=topology, k_fwd=15)
    maps = random_maps(2, 9, 7)
    base_scale = planner(maps).logits.abs().max().item()
    assert base_scale > 1e-3
    assert max(equivariance_errors(planner, maps, elements(group)[1:])) < 1e-4 * max(1.0, base_scale)


@pytest.mark.parametrize("group", ["c4", "d4"])
def test_id_symvin_with_anderson_and_a_backward_pass_is_equivariant(group):
    """Anderson's mixing weights come from inner products, which the group action preserves."""
    torch.manual_seed(1)
    planner = symvin("id-symvin", group=group, k_fwd=20, solver_fwd="anderson")
    maps = random_maps(2, 8, 8, seed=1)
    assert max(equivariance_errors(planner, maps, elements(group)[1:])) < 1e-4
    out = planner(maps)
    out.logits.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in planner.parameters())


def test_c4_symvin_is_not_flip_equivariant():
    """The test above can fail: C4 filters need not be mirror symmetric."""
    torch.manual_seed(2)
    planner = symvin("symvin", group="c4", k_fwd=10)
    errors = equivariance_errors(planner, random_maps(2, 9, 9, seed=2), [(0, True), (1, True)])
    assert min(errors) > 1e-4


@pytest.mark.parametrize("name", ["vin", "id-vin", "convgppn", "id-convgppn"])
def test_non_symmetric_planners_are_not_rotation_equivariant(name):
    torch.manual_seed(3)
    hyper = dict(hidden=8) if "convgppn" in name else dict(l_h=8, l_q=8)
    planner = make_planner(name, k_fwd=10, **hyper).double()
    errors = equivariance_errors(planner, random_maps(2, 9, 9, seed=3), [(1, False), (2, False)])
    assert min(errors) > 1e-4


def regular_permutation(group: str, k: int, flip: bool) -> torch.Tensor:
    """Index map of e2cnn's regular representation of r^k s^flip: channel g moves to channel perm[g]."""
    from e2cnn import gspaces

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if group == "c4":
            gspace, element = gspaces.Rot2dOnR2(4), k
        else:
            gspace, element = gspaces.FlipRot2dOnR2(4), (int(flip), k)
        matrix = np.rint(gspace.regular_repr(element))
    return torch.from_numpy(matrix.argmax(axis=0))


def transform_fields(x: torch.Tensor, group: str, kind: str, k: int, flip: bool) -> torch.Tensor:
    """Act on a stack of trivial or regular fields: move the grid, and permute each regular field's channels."""
    moved = transform_map(x, k, flip)
    if kind == "trivial":
        return moved
    order = GROUP_ORDERS[group]
    fields = moved.unflatten(1, (-1, order))
    out = torch.empty_like(fields)
    out[:, :, regular_permutation(group, k, flip)] = fields
    return out.flatten(1, 2)


@pytest.mark.parametrize("group", ["c4", "d4"])
@pytest.mark.parametrize(
    "in_kind, out_kind, kernel",
    [
        ("trivial", "regular", 1),
        ("regular", "trivial", 1),
        ("trivial", "trivial", 1),
        ("regular", "regular", 1),
        ("trivial", "regular", 3),
        ("regular", "trivial", 3),
        ("regular", "regular", 3),
    ],
)
def test_steerable_convolutions_are_equivariant(group, in_kind, out_kind, kernel):
    """Covers the hand-written 1x1 trivial <-> regular maps and the bases sampled from e2cnn."""
    torch.manual_seed(4)
    conv = SteerableConv(group, in_kind, 3, out_kind, 2, kernel, bias=True).double()
    weight, bias = conv.filter()
    x = torch.randn(2, conv.in_channels, 7, 7, dtype=torch.float64)

    def apply(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, weight, bias, padding=kernel // 2)

    y = apply(x)
    assert y.abs().max() > 1e-3
    for k, flip in elements(group)[1:]:
        lhs = apply(transform_fields(x, group, in_kind, k, flip))
        rhs = transform_fields(y, group, out_kind, k, flip)
        assert (lhs - rhs).abs().max() < 1e-10, (k, flip)


def test_hand_written_one_by_one_bases_repeat_and_sum_over_group_channels():
    """Trivial -> regular repeats one weight over the group channels; regular -> trivial sums them."""
    assert torch.equal(steerable_basis("c4", "trivial", "regular", 1), torch.ones(1, 4, 1, 1, 1))
    assert torch.equal(steerable_basis("d4", "regular", "trivial", 1), torch.ones(1, 1, 8, 1, 1))


def test_symvin_defaults_keep_vin_sized_channels_and_state_dict_is_mode_independent():
    for group, order in GROUP_ORDERS.items():
        planner = make_planner("id-symvin", group=group)
        assert 140 <= planner.step.l_h * order <= 160 and 90 <= planner.step.l_q * order <= 110
    planner = make_planner("symvin", group="d4", l_h=2, l_q=2)
    planner.eval()
    state = planner.state_dict()
    fresh = make_planner("symvin", group="d4", l_h=2, l_q=2)
    fresh.load_state_dict(state)  # strict: no e2cnn filter caches appear in eval mode
    maps = random_maps(1, 6, 6).float()
    torch.testing.assert_close(fresh(maps).logits, planner(maps).logits)
