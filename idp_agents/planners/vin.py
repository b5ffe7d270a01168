"""Value Iteration Network (Tamar et al. 2016) as one weight-tied Bellman step v <- max_c (Q_r + w_v * v)."""

from __future__ import annotations

import math
from collections.abc import Callable

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
    same_conv_module,
)
from idp_agents.planners.bellman_max import MaxStepContext, bellman_max, max_transposed_jacobian

DEFAULT_KERNEL = 5
DEFAULT_DISCOUNT = 0.95


VINContext = MaxStepContext  # reward (B, 1, H, W); filters (l_q, 1, F, F)


class VINStep(BellmanStep):
    """h = conv3x3(map), r = conv1x1(h), Q = conv_F([r, v]) split into reward and value shares, v = max_c Q.

    ``discount`` bounds each Q channel's value filter to that L1 norm (see ``bounded_value_filter``), which makes
    the step a contraction with a unique fixed point; None leaves it unbounded, as in the published VIN.

    The encoder and the policy head are linear, as published, and computed as such: r is one 3x3 convolution with
    the 1x1 filter composed into the 3x3 one (``compose_pointwise``), and the logits are one F x F convolution of
    [r, v] with the policy's 1x1 filter composed into Q's. The model and its gradients are those of the layers
    written out; only the l_h- and l_q-channel intermediates are never formed. With fused steps (the default) the
    Bellman max runs as ``bellman_max``, whose backward touches only each cell's maximal channel.
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
        reward = self.conv(maps, *compose_pointwise(self.r.weight, None, self.h.weight, self.h.bias))
        value_filter = bounded_value_filter(self.q_value, self.discount)
        return VINContext(reward=reward, q_reward_filter=self.q_reward, value_filter=value_filter, compile=self.compile)

    def initial_state(self, ctx: VINContext) -> Tensor:
        return torch.zeros_like(ctx.reward)

    def q_values(self, v: Tensor, ctx: VINContext) -> Tensor:
        """Q (B, l_q, H, W) for the value map v (B, 1, H, W)."""
        return self.conv(torch.cat([ctx.reward, v], dim=1), ctx.q_filter)

    def forward(self, z: Tensor, ctx: VINContext) -> Tensor:
        if not self.fused:
            return channel_max(self.q_values(z, ctx))
        if torch.is_grad_enabled():
            return bellman_max(z, ctx, self.l_q, self.topology)
        return ctx.fused_step(self.l_q, self.topology)(z)

    def transposed_jacobian(self, z: Tensor, ctx: VINContext) -> Callable[[Tensor], Tensor] | None:
        """w -> J^T w at z, J = d step / d v (``max_transposed_jacobian``); None on the plain path."""
        if not self.fused:
            return None
        return max_transposed_jacobian(z, ctx, self.l_q, self.topology)

    def head(self, z: Tensor, ctx: VINContext) -> Tensor:
        policy_filter, _ = compose_pointwise(self.policy.weight, None, ctx.q_filter, None)
        return self.conv(torch.cat([ctx.reward, z], dim=1), policy_filter)

    def value_map(self, z: Tensor) -> Tensor:
        return z[:, 0]


def set_value_iteration(step: VINStep, obstacle_cost: float = 100.0) -> VINStep:
    """Set ``step``'s weights (in place) to exact value iteration: reward -1 per step, -``obstacle_cost`` in
    obstacles and 0 at the goal; Q channels 0-3 move N, W, S, E and the others stay; the logits are the four moves'
    Q. The value map is then minus the BFS distance to the goal (discounted, -(1 - g^d) / (1 - g), with a
    ``discount`` g: the bounded value filter scales the hand-set one, of L1 norm 1), peaking at the goal, and the
    argmax policy moves along shortest paths: a planner that needs no training, for tests, benchmarks and the
    viewer. Needs ``l_h >= 2`` and ``l_q >= 5``. On a plane, zero padding reads as a value of 0 beyond the edge,
    above every cell's: give the map a border of walls, as generated mazes have. With a discount g, cells d steps
    away differ from their neighbours by g^d, which float32 resolves up to d of about 250 at g = 0.95."""
    if step.l_h < 2 or step.l_q < 5 or step.kernel < 3:
        raise ValueError(
            f"value iteration needs l_h >= 2, l_q >= 5 and kernel >= 3, got {step.l_h}, {step.l_q}, {step.kernel}"
        )
    c = step.kernel // 2
    with torch.no_grad():
        for p in step.parameters():
            p.zero_()
        step.h.weight[0, 0, 1, 1] = 1.0  # h0 = obstacle + 1 / (cost - 1)
        step.h.bias[0] = 1.0 / (obstacle_cost - 1.0)
        step.h.weight[1, 1, 1, 1] = 1.0  # h1 = goal
        step.r.weight[0, :2, 0, 0] = torch.tensor([1.0 - obstacle_cost, 1.0])  # r = -1 - (cost - 1) obstacle + goal
        step.q_reward[:, 0, c, c] = 1.0
        moves = ((-1, 0), (0, -1), (1, 0), (0, 1))
        for a in range(step.l_q):
            dr, dc = moves[a] if a < 4 else (0, 0)
            step.q_value[a, 0, c + dr, c + dc] = 1.0
        step.policy.weight[:, :4, 0, 0] = torch.eye(4)
    return step
