"""The VIN Bellman step as one autograd op whose backward touches only each cell's maximal Q channel.

v'_g = max over copies of Q_{copy * G + g}, Q = conv_F(r, W_r) + conv_F(v, W_v): the value at each output cell
depends on one Q channel only, the maximal one, so its gradient reaches the filters and the inputs through that
channel's F x F taps alone. Written with a dense convolution and a max, the backward scatters the gradient into a
(B, C, H, W) tensor that is zero but for one channel per cell and runs both convolutions' backward on it (C times
the arithmetic, and the slowest kernels of a training step on a CPU). Here the backward gathers the maximal
channel's filter row per cell and folds, and adds tap products into the filter rows by index: O(G F^2) per cell
instead of O(C F^2). It keeps only the inputs and the argmax (one byte per cell), so an unrolled VIN keeps per layer
what ``channel_max`` did. Its backward is built from differentiable operations, so a double backward (the Jacobian
regulariser's ``create_graph``) works through it.

VIN (G = 1, C = l_q = 100) trains through it, and ``max_transposed_jacobian`` is the same gather as a map
w -> J^T w for its implicit backward solve, with its (B, k*k, H*W) rows gathered once per solve. SymVIN keeps the
dense max and autograd's products: with G = |G| value channels and only l_q = 25 copies, the gathered rows are G
times wider (G^2 k^2 floats per cell, 4-8x its Q), and its unrolled step measured slower (332 against 222 ms,
K = 30, batch 8, 15x15) and its implicit one no faster at 49x49, with 1.7x the peak memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from idp_agents.planners.fused import TapMax, fold_taps

__all__ = ["MaxStepContext", "bellman_max", "max_transposed_jacobian", "unfold_taps"]


@dataclass(kw_only=True)
class MaxStepContext:
    """What a VIN-family step computes once per forward: the reward and Q's filter, split into its reward and value
    shares: Q = conv_F(reward, q_reward_filter) + conv_F(v, value_filter), C = copies * G channels; and the reward's
    share itself when the step computes it densely (SymVIN's training step), which the fused step then reuses."""

    reward: Tensor  # (B, C_r, H, W)
    q_reward_filter: Tensor  # (C, C_r, F, F)
    value_filter: Tensor  # (C, G, F, F), bounded
    q_reward: Tensor | None = None  # (B, C, H, W) = conv_F(reward, q_reward_filter), when computed
    tap_max: TapMax | None = field(default=None, repr=False)
    compile: str = "auto"  # the step's torch.compile choice for the fused step

    @property
    def q_filter(self) -> Tensor:
        """Q's whole filter, Q = conv_F([reward, v], q_filter): (C, C_r + G, F, F)."""
        return torch.cat([self.q_reward_filter, self.value_filter], dim=1)

    def fused_step(self, copies: int, topology: str) -> TapMax:
        """The fused step (``TapMax``) for this forward, built on first use from these tensors."""
        if self.tap_max is None:
            self.tap_max = TapMax(
                self.reward,
                self.q_reward_filter,
                self.value_filter,
                copies,
                topology,
                q_reward=self.q_reward,
                compile=self.compile,
            )
        return self.tap_max


def unfold_taps(x: Tensor, kernel: int, topology: str) -> Tensor:
    """(B, C, H, W) -> (B, C*k*k, H*W): each cell's k x k neighbourhood, zero padded on a plane, wrapped on a torus.

    The differentiable counterpart of ``fused.shifted_taps`` (which writes the same rows into a preallocated
    (C*k*k, B*H*W) buffer); ``fold_taps`` is its transpose.
    """
    pad = kernel // 2
    if topology == "torus" and pad > 0:
        return F.unfold(F.pad(x, (pad, pad, pad, pad), mode="circular"), kernel)
    return F.unfold(x, kernel, padding=pad)


def _maximal_channels(indices: Tensor, groups: int) -> Tensor:
    """The Q channel (copy * G + g) that each output cell (B, G, H, W) took its maximum from, as (B, G, H*W) int64."""
    group = torch.arange(groups, device=indices.device).view(1, groups, 1)
    return indices.flatten(2).long() * groups + group


def _filter_rows(weight: Tensor, channels: Tensor) -> Tensor:
    """Row ``channels[b, g, n]`` of the flattened filter, as (B, G, C_in*k*k, N)."""
    return weight.flatten(1)[channels].transpose(2, 3)


def _fold_rows(rows: Tensor, grad: Tensor, height: int, width: int, kernel: int, topology: str) -> Tensor:
    """sum_g grad_g * rows_g folded onto the input's cells: (B, G, C_in*k*k, N), (B, G, H, W) -> (B, C_in, H, W)."""
    weighted = rows * grad.flatten(2).unsqueeze(2)
    taps = weighted[:, 0] if weighted.shape[1] == 1 else weighted.sum(dim=1)
    return fold_taps(taps, height, width, kernel, topology)


def _scatter_taps(x: Tensor, channels: Tensor, grad: Tensor, weight: Tensor, topology: str) -> Tensor:
    """The filter's gradient: at each output cell, grad times the input's taps, added into the maximal channel's row."""
    kernel = weight.shape[-1]
    taps = unfold_taps(x, kernel, topology)  # (B, C_in*k*k, N)
    products = grad.flatten(2).unsqueeze(-1) * taps.transpose(1, 2).unsqueeze(1)  # (B, G, N, C_in*k*k)
    flat = weight.new_zeros(weight.shape[0], taps.shape[1])
    return flat.index_add(0, channels.flatten(), products.reshape(-1, taps.shape[1])).view_as(weight)


class _BellmanMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, reward, v, weight_r, weight_v, tap_max: TapMax):  # noqa: ANN001, ANN205 - autograd signature
        values, indices = tap_max(v, indices=True)
        ctx.topology = tap_max.topology
        ctx.save_for_backward(reward, v, weight_r, weight_v, indices)
        return values

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205 - autograd signature
        reward, v, weight_r, weight_v, indices = ctx.saved_tensors
        channels = _maximal_channels(indices, v.shape[1])
        height, width = v.shape[-2:]
        need = ctx.needs_input_grad
        grads = [None] * 5
        for position, x, weight in ((0, reward, weight_r), (1, v, weight_v)):
            if need[position]:
                rows = _filter_rows(weight, channels)
                grads[position] = _fold_rows(rows, grad, height, width, weight.shape[-1], ctx.topology)
            if need[position + 2]:
                grads[position + 2] = _scatter_taps(x, channels, grad, weight, ctx.topology)
        return tuple(grads)


def bellman_max(v: Tensor, ctx: MaxStepContext, copies: int, topology: str) -> Tensor:
    """v' (B, G, H, W) = max over copies of conv(ctx.reward, ctx.q_reward_filter) + conv(v, ctx.value_filter),
    differentiable in v, the reward and both filters; the forward is the context's fused step. Ties go to the first
    maximal copy, as in ``channel_max``."""
    step = ctx.fused_step(copies, topology)
    return _BellmanMax.apply(ctx.reward, v, ctx.q_reward_filter, ctx.value_filter, step)


def max_transposed_jacobian(z: Tensor, ctx: MaxStepContext, copies: int, topology: str) -> Callable[[Tensor], Tensor]:
    """w -> J^T w for the step at z, J = d v' / d v: each output cell sends w times its maximal channel's value
    filter back. The (B, G, G*k*k, H*W) coefficients are gathered once, so a product is a multiply and a fold
    instead of a (B, C, H, W) scatter and a transposed convolution."""
    weight_v = ctx.value_filter
    with torch.no_grad():
        _, indices = ctx.fused_step(copies, topology)(z, indices=True)
        rows = _filter_rows(weight_v.detach(), _maximal_channels(indices, z.shape[1])).contiguous()
    height, width = z.shape[-2:]

    def product(w: Tensor) -> Tensor:
        return _fold_rows(rows, w, height, width, weight_v.shape[-1], topology)

    return product
