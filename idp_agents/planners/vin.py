"""Value Iteration Network (Tamar et al. 2016) as one weight-tied Bellman step v <- max_c (Q_r + w_v * v)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from idp_agents.planners.base import (
    BellmanStep,
    bounded_value_filter,
    channel_max,
    check_discount,
    check_odd_kernel,
    check_positive,
    same_conv_module,
)
from idp_agents.planners.fused import TapMax, fold_taps, fused_enabled, use_fused

DEFAULT_KERNEL = 5
DEFAULT_DISCOUNT = 0.95


@dataclass
class VINContext:
    """What VIN computes once per forward: the reward map and its share of Q."""

    reward: Tensor  # (B, 1, H, W)
    q_reward: Tensor  # (B, l_q, H, W): conv(r, w_r), the part of Q that does not change between steps
    value_filter: Tensor  # (l_q, 1, F, F): the bounded value share of Q's filter
    tap_max: TapMax | None = field(default=None, repr=False)  # the fused step, built on the first no-grad step


class VINStep(BellmanStep):
    """h = conv3x3(map), r = conv1x1(h), Q = conv_F([r, v]) split into reward and value shares, v = max_c Q.

    ``discount`` bounds each Q channel's value filter to that L1 norm (see ``bounded_value_filter``), which makes
    the step a contraction with a unique fixed point; None leaves it unbounded, as in the published VIN.
    """

    def __init__(
        self,
        *,
        topology: str = "plane",
        l_h: int = 150,
        l_q: int = 100,
        kernel: int = DEFAULT_KERNEL,
        discount: float | None = DEFAULT_DISCOUNT,
    ) -> None:
        super().__init__(topology)
        self.l_h = check_positive(l_h, "l_h")
        self.l_q = check_positive(l_q, "l_q")
        self.kernel = check_odd_kernel(kernel)
        self.discount = check_discount(discount)
        self.h = same_conv_module(2, l_h, 3, topology)
        self.r = nn.Conv2d(l_h, 1, 1, bias=False)
        self.q_reward = nn.Parameter(torch.empty(l_q, 1, kernel, kernel))
        self.q_value = nn.Parameter(torch.empty(l_q, 1, kernel, kernel))
        self.policy = nn.Conv2d(l_q, 4, 1, bias=False)
        # As in the published VIN code: nn.Conv2d's default init for the reward share, zeros for the value share,
        # so the untrained step is constant in v and its fixed point is found at once.
        nn.init.kaiming_uniform_(self.q_reward, a=math.sqrt(5))
        nn.init.zeros_(self.q_value)

    def encode(self, maps: Tensor) -> VINContext:
        reward = self.r(self.h(maps))
        value_filter = bounded_value_filter(self.q_value, self.discount)
        return VINContext(reward=reward, q_reward=self.conv(reward, self.q_reward), value_filter=value_filter)

    def initial_state(self, ctx: VINContext) -> Tensor:
        return torch.zeros_like(ctx.reward)

    def q_values(self, v: Tensor, ctx: VINContext) -> Tensor:
        """Q (B, l_q, H, W) for the value map v (B, 1, H, W)."""
        return ctx.q_reward + self.conv(v, ctx.value_filter)

    def forward(self, z: Tensor, ctx: VINContext) -> Tensor:
        if use_fused(self.fused):
            if ctx.tap_max is None:
                ctx.tap_max = TapMax(ctx.reward, self.q_reward, ctx.value_filter, self.l_q, self.topology)
            return ctx.tap_max(z)
        return channel_max(self.q_values(z, ctx))

    def transposed_jacobian(self, z: Tensor, ctx: VINContext) -> Callable[[Tensor], Tensor] | None:
        """w -> J^T w at z, J = d step / d v: each cell sends w times its argmax channel's value filter back.

        Builds (B, k*k, H*W) coefficients once, so each product is k*k multiplies and a fold instead of a
        (B, l_q, H, W) scatter and a transposed convolution. Ties in the max are broken towards the first channel
        (autograd's amax splits the gradient between them; a tie is a point where the step is not differentiable).
        """
        if not self.fused or not fused_enabled():
            return None
        with torch.no_grad():
            best = self.q_values(z, ctx).argmax(dim=1).flatten(1)  # (B, H*W)
            coefficients = ctx.value_filter.detach().flatten(1)[best].transpose(1, 2)  # (B, k*k, H*W)
        height, width = z.shape[-2:]

        def product(w: Tensor) -> Tensor:
            return fold_taps(coefficients * w.flatten(2), height, width, self.kernel, self.topology)

        return product

    def head(self, z: Tensor, ctx: VINContext) -> Tensor:
        return self.policy(self.q_values(z, ctx))

    def value_map(self, z: Tensor) -> Tensor:
        return z[:, 0]
