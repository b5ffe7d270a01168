"""The VIN-family Bellman max with its argmax-sparse backward equals the dense conv-then-max it replaces: values,
first and second derivatives (double precision, random inputs, so no ties), and the encoder and head computed as
single convolutions equal the layers written out."""

from __future__ import annotations

import pytest
import torch

from idp_agents.planners import make_planner
from idp_agents.planners.base import channel_max, same_conv2d
from idp_agents.planners.bellman_max import MaxStepContext, bellman_max, unfold_taps
from idp_agents.planners.fused import fold_taps


def dense_max(reward, v, weight_r, weight_v, copies, topology):
    q = same_conv2d(reward, weight_r, None, topology) + same_conv2d(v, weight_v, None, topology)
    return channel_max(q.unflatten(1, (copies, v.shape[1]))).squeeze(1)


def sparse_max(reward, v, weight_r, weight_v, copies, topology):
    ctx = MaxStepContext(reward=reward, q_reward_filter=weight_r, value_filter=weight_v)
    return bellman_max(v, ctx, copies, topology)


def inputs(groups: int, copies: int, kernel: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)

    channels = copies * groups
    return (
        rand(2, 1, 5, 4),
        rand(2, groups, 5, 4),
        rand(channels, 1, kernel, kernel),
        rand(channels, groups, kernel, kernel),
    )


@pytest.mark.parametrize("topology", ["plane", "torus"])
@pytest.mark.parametrize(("groups", "copies", "kernel"), [(1, 6, 3), (1, 4, 5), (4, 3, 3)])
def test_bellman_max_equals_the_dense_max_with_its_first_and_second_derivatives(topology, groups, copies, kernel):
    args = inputs(groups, copies, kernel)
    expected = dense_max(*args, copies, topology)
    out = sparse_max(*args, copies, topology)
    assert torch.allclose(out, expected, atol=1e-12)
    grad = torch.randn_like(out)
    assert all(
        torch.allclose(a, b, atol=1e-12)
        for a, b in zip(torch.autograd.grad(out, args, grad), torch.autograd.grad(expected, args, grad), strict=True)
    )
    fn = lambda *a: sparse_max(*a, copies, topology)  # noqa: E731 - gradcheck takes a function of the inputs
    assert torch.autograd.gradcheck(fn, args, fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, args, fast_mode=True)


def test_bellman_max_keeps_only_its_inputs_and_one_byte_per_output_for_backward():
    reward, v, weight_r, weight_v = inputs(1, 6, 3)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        sparse_max(reward, v, weight_r, weight_v, 6, "plane")
    extra = [t for t in saved if not any(t is x for x in (reward, v, weight_r, weight_v))]
    assert [(t.dtype, tuple(t.shape)) for t in extra] == [(torch.uint8, tuple(v.shape))]


def test_unfold_taps_is_the_transpose_of_fold_taps():
    for topology in ("plane", "torus"):
        x, t = torch.randn(2, 3, 5, 4), torch.randn(2, 3 * 9, 5 * 4)
        lhs = (fold_taps(t, 5, 4, 3, topology) * x).sum()
        assert torch.allclose(lhs, (t * unfold_taps(x, 3, topology)).sum(), atol=1e-4)


@pytest.mark.parametrize("topology", ["plane", "torus"])
@pytest.mark.parametrize(("name", "kwargs"), [("vin", {}), ("symvin", dict(group="c4")), ("symvin", dict(group="d4"))])
def test_linear_encoder_and_head_equal_the_layers_written_out(topology, name, kwargs):
    step = make_planner(name, topology=topology, l_h=5, l_q=3, **kwargs).double().step
    torch.manual_seed(0)
    with torch.no_grad():
        for p in step.parameters():
            p.normal_()
    maps = torch.rand(2, 2, 6, 5, dtype=torch.float64)
    ctx = step.encode(maps)
    v = torch.randn(step.initial_state(ctx).shape, dtype=torch.float64)

    def conv(x, layer):
        weight, bias = (layer.weight, layer.bias) if isinstance(layer, torch.nn.Conv2d) else layer.filter()
        return same_conv2d(x, weight, bias, topology)

    reward = conv(conv(maps, step.h), step.r)
    q_reward = conv(reward, step.q_reward) if name == "symvin" else same_conv2d(reward, step.q_reward, None, topology)
    q = q_reward + same_conv2d(v, ctx.value_filter, None, topology)
    logits = conv(q, step.policy)
    if name == "symvin":
        logits = logits.unflatten(1, (step.order // 4, 4)).sum(dim=1)
    assert torch.allclose(ctx.reward, reward, atol=1e-10)
    assert torch.allclose(step.q_values(v, ctx), q, atol=1e-10)
    assert torch.allclose(step.head(v, ctx), logits, atol=1e-10)
