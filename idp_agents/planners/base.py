"""A planner is an encoder, one weight-tied Bellman step solved to its fixed point, and a policy head."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from idp_agents.fixed_point_config import FixedPointConfig, FixedPointInfo
from idp_agents.implicit import solve_fixed_point
from idp_agents.jacobian import spectral_radius
from idp_agents.solvers import RESIDUAL_EPS, SolverBuffers, anderson
from idp_envs.grid import check_topology


def check_odd_kernel(kernel: int, name: str = "kernel") -> int:
    """Return `kernel` if it is a positive odd int (a 'same' convolution needs a centre), else raise."""
    if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"{name} must be a positive odd int, got {kernel!r}")
    return kernel


def check_positive(value: int, name: str) -> int:
    """Return `value` if it is a positive int, else raise a ValueError naming the hyperparameter."""
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_discount(discount: float | None, name: str = "discount") -> float | None:
    """Return `discount` if it is None (unbounded) or a number in (0, 1), else raise naming the problem."""
    if discount is not None and not (isinstance(discount, (int, float)) and 0 < discount < 1):
        raise ValueError(f"{name} must lie in (0, 1) or be None (unbounded), got {discount!r}")
    return discount


def bounded_value_filter(weight: Tensor, discount: float | None, rows_per_field: int = 1) -> Tensor:
    """Scale each output field's value filter so that every row's L1 norm is at most ``discount``.

    The VIN-family step v' = max_c (Q_r,c + w_c * v) then is a ``discount``-contraction in the max norm
    (|v1' - v2'| <= max_c ||w_c||_1 ||v1 - v2||_inf), so it has exactly one fixed point and the spectral radius of
    its Jacobian is at most ``discount``: the learned counterpart of value iteration's discount factor. The rows of
    one regular field share one scale, which keeps a steerable filter equivariant. ``None``: the filter unchanged.
    ConvGPPN's ``contraction`` bounds its gate filters' rows with it too.
    """
    if discount is None:
        return weight
    norms = weight.abs().flatten(1).sum(dim=1).view(-1, rows_per_field).amax(dim=1)
    scale = discount / norms.clamp_min(discount)
    return weight * scale.repeat_interleave(rows_per_field).view(-1, *([1] * (weight.dim() - 1)))


def compose_pointwise(
    outer: Tensor, outer_bias: Tensor | None, inner: Tensor, inner_bias: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """The conv2d filter and bias of a 1x1 convolution (``outer``, (O, C, 1, 1)) applied after another (``inner``,
    (C, I, k, k)): equal to the two layers on every map, borders included, since the 1x1 one reads no padding."""
    weight = torch.einsum("oc,cikl->oikl", outer.flatten(1), inner)
    bias = None if inner_bias is None else outer.flatten(1) @ inner_bias
    if outer_bias is not None:
        bias = outer_bias if bias is None else bias + outer_bias
    return weight, bias


class _ChannelMax(torch.autograd.Function):
    """max over ``dim`` that keeps only the argmax indices (one byte per output cell when they fit) for backward."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:
        values, indices = x.max(dim=dim, keepdim=True)
        ctx.dim, ctx.shape = dim, x.shape
        ctx.save_for_backward(indices.to(torch.uint8) if x.shape[dim] <= 256 else indices)
        return values

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (indices,) = ctx.saved_tensors
        # out-of-place, so that a double backward (the Jacobian regulariser's create_graph) stays differentiable
        return grad.new_zeros(ctx.shape).scatter(ctx.dim, indices.long(), grad), None


def channel_max(x: Tensor, dim: int = 1) -> Tensor:
    """max of ``x`` over ``dim`` (kept as size 1), the gradient flowing to the first maximal entry.

    Unlike ``amax``, whose backward keeps the whole input, this keeps only the argmax indices, so an unrolled VIN
    holds (B, 1, H, W) bytes per layer for the max where ``amax`` held (B, l_q, H, W) floats. On a tie the whole
    gradient goes to the first maximal channel (``amax`` splits it): the step is not differentiable there.
    """
    return _ChannelMax.apply(x, dim)


def same_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, topology: str) -> Tensor:
    """Convolution keeping H x W: zero padding on the plane, circular (wrap-around) padding on the torus."""
    pad = weight.shape[-1] // 2
    if topology == "torus" and pad > 0:
        return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="circular"), weight, bias)
    return F.conv2d(x, weight, bias, padding=pad)


def same_conv_module(in_channels: int, out_channels: int, kernel: int, topology: str, bias: bool = True) -> nn.Conv2d:
    """An nn.Conv2d keeping H x W, padded with zeros on the plane and circularly on the torus."""
    padding_mode = "circular" if topology == "torus" else "zeros"
    return nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, padding_mode=padding_mode, bias=bias)


class BellmanStep(nn.Module, ABC):
    """One weight-tied Bellman step f(z, ctx) with its encoder and policy head.

    ``fused``: when autograd is off (the implicit forward solve, evaluation), take the step's fused kernel if it
    has one (see ``idp_agents.planners.fused``); set it False to force the plain, reference path. ``compile``:
    run the fused kernels through torch.compile, "auto" (on CUDA only), "1" (everywhere) or "0" (never).
    """

    def __init__(self, topology: str = "plane") -> None:
        super().__init__()
        self.topology = check_topology(topology)
        self.fused = True
        self.compile = "auto"

    def conv(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """A 'same' convolution padded according to this step's topology."""
        return same_conv2d(x, weight, bias, self.topology)

    @abstractmethod
    def encode(self, maps: Tensor) -> Any:
        """Features computed once per forward from maps (B, 2, H, W): [obstacles (1 = obstacle), goal one-hot]."""

    @abstractmethod
    def initial_state(self, ctx: Any) -> Tensor:
        """Zeros of the state's shape, the start of the fixed-point solve."""

    @abstractmethod
    def forward(self, z: Tensor, ctx: Any) -> Tensor:
        """One Bellman step; returns a tensor of the same shape as z."""

    def transposed_jacobian(self, z: Tensor, ctx: Any) -> Callable[[Tensor], Tensor] | None:
        """Optionally, a fast w -> J^T w (J = d forward / d z at z) for the implicit backward solve; None: autograd."""
        return None

    @abstractmethod
    def head(self, z: Tensor, ctx: Any) -> Tensor:
        """Action logits (B, 4, H, W) in the order N, W, S, E."""

    @abstractmethod
    def value_map(self, z: Tensor) -> Tensor:
        """A (B, H, W) value map for display."""


@dataclass
class PlannerTrace:
    """The plain iteration z_{k+1} = f(z_k) from the initial state, as a planner's values and policy take shape."""

    values: Tensor  # (K + 1, B, H, W): the value map of z_0 ... z_K (only z_K's, (1, B, H, W), unless ``every``)
    logits: Tensor  # (K + 1, B, 4, H, W): the head's action logits at the same iterates
    residuals: Tensor  # (K, B): ||f(z_k) - z_k|| / ||f(z_k)|| for k < K, as the solvers measure it


@dataclass
class PlannerOutput:
    """Logits for every cell, the value map, and the fixed-point solver's diagnostics."""

    logits: Tensor
    value: Tensor
    info: FixedPointInfo


def check_maps(maps: Any) -> Tensor:
    """Return `maps` if it is a floating tensor of shape (B, 2, H, W), else raise a ValueError saying why."""
    if not isinstance(maps, Tensor):
        raise ValueError(f"maps must be a torch.Tensor of shape (B, 2, H, W), got {type(maps).__name__}")
    if maps.dim() != 4 or maps.shape[1] != 2:
        raise ValueError(
            f"maps must have shape (B, 2, H, W) with channels [obstacles, goal one-hot], got shape {tuple(maps.shape)}"
        )
    if min(maps.shape[0], maps.shape[2], maps.shape[3]) < 1:
        raise ValueError(f"maps must have B, H, W >= 1, got shape {tuple(maps.shape)}")
    if not maps.is_floating_point():
        raise ValueError(f"maps must be a floating-point tensor, got dtype {maps.dtype}")
    return maps


class Planner(nn.Module):
    """Encode the map, solve the step's fixed point (unrolled or implicit), and read out action logits."""

    def __init__(self, step: BellmanStep, fixed_point: FixedPointConfig) -> None:
        super().__init__()
        self.step = step
        self.fixed_point = fixed_point
        self.solver_buffers = SolverBuffers()  # the solvers' history, reused from one solve to the next

    @property
    def topology(self) -> str:
        return self.step.topology

    def forward(self, maps: Tensor, step: int | None = None) -> PlannerOutput:
        """Plan on ``maps`` (B, 2, H, W); ``step``, the training step's index, drives the regularisers' schedule
        (``FixedPointConfig.jac_reg_every``)."""
        ctx = self.step.encode(check_maps(maps))
        z, info = solve_fixed_point(
            lambda state: self.step(state, ctx),
            self.step.initial_state(ctx),
            self.fixed_point,
            transposed_jacobian=lambda z_star: self.step.transposed_jacobian(z_star, ctx),
            restrict=lambda index: self._step_on(maps[index]),
            step=step,
            buffers=self.solver_buffers,
        )
        return PlannerOutput(logits=self.step.head(z, ctx), value=self.step.value_map(z), info=info)

    def _step_on(self, maps: Tensor) -> Callable[[Tensor], Tensor]:
        """The step on these maps alone, for a solve that continues some samples of a batch."""
        ctx = self.step.encode(maps)
        return lambda state: self.step(state, ctx)

    def trace(self, maps: Tensor, iterations: int, every: bool = True) -> PlannerTrace:
        """Apply the step ``iterations`` times from its initial state and measure each step's relative residual:
        the unrolled planner's forward pass step by step, and for an implicit planner the plain iteration towards
        the fixed point that its solver (Anderson, by default) reaches in fewer steps. ``every``: keep every
        iterate's value map and logits; otherwise only the last one's."""
        if not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"iterations must be a non-negative int, got {iterations!r}")
        with torch.no_grad():
            ctx = self.step.encode(check_maps(maps))
            z = self.step.initial_state(ctx)
            values, logits, residuals = [], [], []
            for k in range(iterations + 1):
                if every or k == iterations:
                    values.append(self.step.value_map(z))
                    logits.append(self.step.head(z, ctx))
                if k < iterations:
                    fz = self.step(z, ctx)
                    residuals.append((fz - z).flatten(1).norm(dim=1) / (fz.flatten(1).norm(dim=1) + RESIDUAL_EPS))
                    z = fz
        stacked = torch.stack(residuals) if residuals else maps.new_zeros(0, maps.shape[0])
        return PlannerTrace(torch.stack(values), torch.stack(logits), stacked)

    def spectral_radius(self, maps: Tensor, iterations: int = 40, solve_iterations: int = 200) -> Tensor:
        """(B,) spectral radius of the step's Jacobian dz'/dz at its fixed point on ``maps``, by power iteration.

        The fixed point is found by Anderson with a generous budget (``solve_iterations``, tolerance 1e-6) whatever
        the planner's own mode, so unrolled and implicit planners are measured alike. Below 1: the step is locally a
        contraction, the condition under which the implicit gradient is exact and the forward solve converges.
        """
        with torch.no_grad():
            ctx = self.step.encode(check_maps(maps))
            z0 = self.step.initial_state(ctx)
            z_star, _ = anderson(lambda z: self.step(z, ctx), z0, solve_iterations, 1e-6, buffers=self.solver_buffers)
        return spectral_radius(lambda z: self.step(z, ctx), z_star, iterations)
