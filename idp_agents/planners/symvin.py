"""SymVIN (Zhao et al., ICLR 2023): VIN built from steerable convolutions, equivariant to C4 or D4 on the grid.

Fields: the map and the reward are trivial (scalar) fields; Q is `l_q` regular fields; V is one regular field,
the max over the `l_q` copies taken separately for each group element. The policy head maps Q to one regular
field and sums it over each coset of the stabiliser of "north", so the 4 logits permute like the actions.

`l_h` and `l_q` count regular fields (|G| channels each). Their defaults keep VIN's channel counts (l_h=150,
l_q=100): C4 38 and 25 fields (152 and 100 channels), D4 19 and 12 (152 and 96), with far fewer free weights.

Filters are expanded from e2cnn's steerable bases once per forward (in `encode`), so every Bellman step is a
plain `conv2d`. e2cnn is used only at construction to sample the bases; 1x1 maps with a trivial side (which
e2cnn 0.2.3 cannot build on torch 2.x) use their bases written out directly.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import torch
from torch import Tensor, nn

from idp_agents.planners.base import (
    BellmanStep,
    bounded_value_filter,
    channel_max,
    check_discount,
    check_odd_kernel,
    check_positive,
    compose_pointwise,
)
from idp_agents.planners.bellman_max import MaxStepContext
from idp_agents.planners.vin import DEFAULT_DISCOUNT, DEFAULT_KERNEL

GROUP_ORDERS = {"c4": 4, "d4": 8}
FIELD_KINDS = ("trivial", "regular")
DEFAULT_FIELDS = {"c4": (38, 25), "d4": (19, 12)}  # (l_h, l_q) regular fields: ~150 and ~100 channels, like VIN


def check_group(group: str) -> str:
    """Return `group` if it is a supported symmetry group name, else raise a ValueError naming the valid ones."""
    if group not in GROUP_ORDERS:
        raise ValueError(f"group must be one of {tuple(GROUP_ORDERS)}, got {group!r}")
    return group


def field_size(group: str, kind: str) -> int:
    """Channels per field: 1 for a trivial field, |G| for a regular one."""
    if kind not in FIELD_KINDS:
        raise ValueError(f"field kind must be one of {FIELD_KINDS}, got {kind!r}")
    return 1 if kind == "trivial" else GROUP_ORDERS[check_group(group)]


@functools.cache
def steerable_basis(group: str, in_kind: str, out_kind: str, kernel: int) -> Tensor:
    """Basis (n, d_out, d_in, k, k) of the equivariant k x k kernels from one field of `in_kind` to one of `out_kind`.

    Element g of a regular field sits in channel g (e2cnn's element order); rotating a map by 90 degrees
    counter-clockwise (torch.rot90 on dims (2, 3)) moves channel g to channel r*g.
    """
    d_in, d_out = field_size(group, in_kind), field_size(group, out_kind)
    check_odd_kernel(kernel)
    if kernel == 1 and "trivial" in (in_kind, out_kind):
        # Trivial -> regular: the same weight on every group channel; regular -> trivial: their plain sum.
        return torch.ones(1, d_out, d_in, 1, 1)
    from e2cnn import gspaces
    from e2cnn import nn as enn

    gspace = gspaces.Rot2dOnR2(4) if group == "c4" else gspaces.FlipRot2dOnR2(4)
    reprs = {"trivial": gspace.trivial_repr, "regular": gspace.regular_repr}
    # R2Conv initialises weights we discard; forking the RNGs keeps a seeded planner's weights the same whether or
    # not this cache was already filled in the process (it consumed the caller's random draws before).
    numpy_state = np.random.get_state()
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")  # e2cnn's deprecation noise under torch 2.x
        conv = enn.R2Conv(
            enn.FieldType(gspace, [reprs[in_kind]]), enn.FieldType(gspace, [reprs[out_kind]]), kernel, bias=False
        )
        with torch.no_grad():
            unit = torch.eye(conv.weights.numel(), dtype=conv.weights.dtype)
            basis = torch.stack([conv.basisexpansion(unit[i]) for i in range(len(unit))])
    np.random.set_state(numpy_state)
    return basis.reshape(len(unit), d_out, d_in, kernel, kernel).float().contiguous()


class SteerableConv(nn.Module):
    """A k x k convolution between `n_in` fields and `n_out` fields of given kinds, equivariant by construction.

    Holds one weight per (out field, in field, basis element); `filter()` expands it to a plain conv2d weight.
    Initialised so the expanded filter has nn.Conv2d's default scale.
    """

    def __init__(
        self, group: str, in_kind: str, n_in: int, out_kind: str, n_out: int, kernel: int, bias: bool = False
    ) -> None:
        super().__init__()
        basis = steerable_basis(group, in_kind, out_kind, kernel)
        self.register_buffer("basis", basis.clone(), persistent=False)
        self.in_channels = n_in * basis.shape[2]
        self.out_channels = n_out * basis.shape[1]
        self.weight = nn.Parameter(torch.empty(n_out, n_in, basis.shape[0]))
        self.bias = nn.Parameter(torch.empty(n_out)) if bias else None
        fan_in = self.in_channels * kernel * kernel
        mean_square_per_weight = basis.square().sum() / basis[0].numel()
        nn.init.normal_(self.weight, std=math.sqrt(1.0 / (3 * fan_in) / mean_square_per_weight.item()))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))

    def filter(self) -> tuple[Tensor, Tensor | None]:
        """The expanded conv2d weight (out_channels, in_channels, k, k) and bias (constant within each field)."""
        weight = torch.einsum("oib,bpqxy->opiqxy", self.weight, self.basis)
        weight = weight.reshape(self.out_channels, self.in_channels, *self.basis.shape[-2:])
        bias = None if self.bias is None else self.bias.repeat_interleave(self.basis.shape[1])
        return weight, bias


SymVINContext = MaxStepContext  # reward (B, 1, H, W); filters (l_q * |G|, 1 or |G|, F, F); q_reward computed


class SymVINStep(BellmanStep):
    """The VIN step on steerable fields: Q = conv_F(R) + conv_F(V) as l_q regular fields, V = max over the copies.

    ``discount`` bounds the value filter of each Q field as in VIN (one scale per field keeps it equivariant), so the
    step is a contraction; None leaves it unbounded. As in VIN (see ``VINStep``), the linear encoder and head run as
    one convolution each (``compose_pointwise``).
    """

    def __init__(
        self,
        *,
        topology: str = "plane",
        group: str = "c4",
        l_h: int | None = None,
        l_q: int | None = None,
        kernel: int = DEFAULT_KERNEL,
        discount: float | None = DEFAULT_DISCOUNT,
    ) -> None:
        super().__init__(topology)
        self.group = check_group(group)
        self.discount = check_discount(discount)
        self.order = GROUP_ORDERS[group]
        default_l_h, default_l_q = DEFAULT_FIELDS[group]
        self.l_h = check_positive(default_l_h if l_h is None else l_h, "l_h")
        self.l_q = check_positive(default_l_q if l_q is None else l_q, "l_q")
        self.kernel = check_odd_kernel(kernel)
        self.h = SteerableConv(group, "trivial", 2, "regular", self.l_h, 3, bias=True)
        self.r = SteerableConv(group, "regular", self.l_h, "trivial", 1, 1)
        self.q_reward = SteerableConv(group, "trivial", 1, "regular", self.l_q, kernel)
        self.q_value = SteerableConv(group, "regular", 1, "regular", self.l_q, kernel)
        self.policy = SteerableConv(group, "regular", self.l_q, "regular", 1, 1)
        nn.init.zeros_(self.q_value.weight)  # as VIN: the untrained step is constant in v

    def encode(self, maps: Tensor) -> SymVINContext:
        reward = self.conv(maps, *compose_pointwise(*self.r.filter(), *self.h.filter()))
        q_reward_filter = self.q_reward.filter()[0]
        value_filter = bounded_value_filter(self.q_value.filter()[0], self.discount, rows_per_field=self.order)
        return SymVINContext(
            reward=reward,
            q_reward_filter=q_reward_filter,
            value_filter=value_filter,
            q_reward=self.conv(reward, q_reward_filter),
            compile=self.compile,
        )

    def initial_state(self, ctx: SymVINContext) -> Tensor:
        b, _, h, w = ctx.reward.shape
        return ctx.reward.new_zeros(b, self.order, h, w)

    def q_values(self, v: Tensor, ctx: SymVINContext) -> Tensor:
        """Q (B, l_q * |G|, H, W) for the regular value field v (B, |G|, H, W)."""
        return ctx.q_reward + self.conv(v, ctx.value_filter)

    def forward(self, z: Tensor, ctx: SymVINContext) -> Tensor:
        # With autograd on, the dense max and autograd's backward: for SymVIN's |G| value channels the gathered one
        # of ``bellman_max`` measured slower (see there), and its J^T rows held 4-8x the memory of Q.
        if torch.is_grad_enabled() or not self.fused:
            q = self.q_values(z, ctx)
            return channel_max(q.unflatten(1, (self.l_q, self.order))).squeeze(1)
        return ctx.fused_step(self.l_q, self.topology)(z)

    def head(self, z: Tensor, ctx: SymVINContext) -> Tensor:
        policy_filter, _ = compose_pointwise(self.policy.filter()[0], None, ctx.q_filter, None)
        field = self.conv(torch.cat([ctx.reward, z], dim=1), policy_filter)
        # Channel g holds element g; for D4 channels a and 4 + a are r^a and r^a s (s the left-right flip,
        # which fixes N), the coset r^a <s> that maps north to action a. For C4 this is the identity.
        return field.unflatten(1, (self.order // 4, 4)).sum(dim=1)

    def value_map(self, z: Tensor) -> Tensor:
        return z.amax(dim=1)
