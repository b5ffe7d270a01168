"""ConvGPPN: Gated Path Planning Networks (Lee et al. 2018), a convolutional GRU or LSTM as the weight-tied step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from idp_agents.planners.base import (
    BellmanStep,
    bounded_value_filter,
    check_discount,
    check_odd_kernel,
    check_positive,
    same_conv_module,
)
from idp_agents.planners.fused import (
    compile_wanted,
    compiled_gru_update,
    gru_update,
    gru_update_inplace,
    lstm_update,
    lstm_update_inplace,
    use_fused,
)


@dataclass
class ConvGPPNContext:
    """What ConvGPPN computes once per forward: the input's share of the cell's gates."""

    input_gates: Tensor  # (B, G * hidden, H, W): the gates' pre-activations from the reward features (G = 3 or 4)
    hidden_weight: Tensor  # (G * hidden, hidden, F, F): the hidden-gate filter, bounded when the GRU step is


CELLS = ("gru", "lstm")
# The LSTM's forget gate f is scaled into (0, 0.9): a gate saturated at 1 keeps whatever cell state it holds, a mode
# of spectral radius 1 with no unique fixed point (unbounded, ID-ConvGPPN had 98.5% of its solves above tolerance at
# epoch 2 on 15x15 mazes); bounded, the cell state forgets at least a tenth per step.
LSTM_FORGET_BOUND = 0.9


class ConvGPPNStep(BellmanStep):
    """r = encoder(map); h <- ConvGRU(r, h), or (h, c) <- ConvLSTM(r, h, c), with kernel F, r injected every step;
    logits = conv1x1(h).

    ``cell`` "lstm" (the default) is GPPN's own cell (Lee et al. 2018, and the ConvGPPN of the implicit-planning
    paper's code): the state is [h, c] (B, 2 * hidden, H, W), the forget gate scaled into (0, ``forget_bound``).
    "gru" keeps the state h (B, hidden, H, W). The two differ at a fixed point: the GRU's update gate u cancels there
    (h = u h + (1 - u) h~ holds iff h = h~), so its fixed point is that of h = h~(r, h); the LSTM's forget gate f does
    not (c = f c + i g gives c = i g / (1 - f)), which leaves the fixed point a per-cell gain. Measured on 15x15 mazes
    (docs/results.md), implicit with the GRU trailed its unrolled twin by 6 points; with the LSTM it does not.
    """

    def __init__(
        self,
        *,
        topology: str = "plane",
        hidden: int = 40,
        kernel: int = 3,
        contraction: float | None = None,
        cell: str = "lstm",
        forget_bound: float | None = None,
    ) -> None:
        super().__init__(topology)
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
        if cell == "lstm" and contraction is not None:
            raise ValueError("contraction bounds the GRU cell's gates only; use it with cell='gru'")
        if cell != "lstm" and forget_bound is not None:
            raise ValueError("forget_bound bounds the LSTM cell's forget gate; use it with cell='lstm'")
        if cell == "lstm":
            forget_bound = LSTM_FORGET_BOUND if forget_bound is None else forget_bound
            if not (isinstance(forget_bound, (int, float)) and 0 < forget_bound <= 1):
                raise ValueError(f"forget_bound must lie in (0, 1] (1: the unbounded LSTM), got {forget_bound!r}")
        self.cell = cell
        self.forget_bound = forget_bound
        self.contraction = check_discount(contraction, "contraction")
        self.hidden = check_positive(hidden, "hidden")
        self.kernel = check_odd_kernel(kernel)
        self.encoder = nn.Sequential(
            same_conv_module(2, hidden, 3, topology),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
        )
        gates = 4 if cell == "lstm" else 3
        self.input_gates = same_conv_module(hidden, gates * hidden, kernel, topology)
        self.hidden_gates = same_conv_module(hidden, gates * hidden, kernel, topology)
        self.policy = nn.Conv2d(hidden, 4, 1)

    def encode(self, maps: Tensor) -> ConvGPPNContext:
        return ConvGPPNContext(input_gates=self.input_gates(self.encoder(maps)), hidden_weight=self.hidden_weight())

    def hidden_weight(self) -> Tensor:
        """The hidden-gate filter; with ``contraction`` k its reset, update and candidate rows are scaled to L1 norms
        of at most 1, k/8 and 3k/5, which bounds the step's Lipschitz constant in the max norm by u + (1 - u) k < 1
        per cell (u the update gate), since |h| <= 1."""
        weight = self.hidden_gates.weight
        if self.contraction is None:
            return weight
        bounds = (1.0, self.contraction / 8, 3 * self.contraction / 5)
        return torch.cat(
            [bounded_value_filter(rows, bound) for rows, bound in zip(weight.chunk(3), bounds, strict=True)]
        )

    def initial_state(self, ctx: ConvGPPNContext) -> Tensor:
        b, _, h, w = ctx.input_gates.shape
        return ctx.input_gates.new_zeros(b, self.hidden * (2 if self.cell == "lstm" else 1), h, w)

    def forward(self, z: Tensor, ctx: ConvGPPNContext) -> Tensor:
        return self._lstm(z, ctx) if self.cell == "lstm" else self._gru(z, ctx)

    def _gru(self, z: Tensor, ctx: ConvGPPNContext) -> Tensor:
        hidden_gates = self.conv(z, ctx.hidden_weight, self.hidden_gates.bias)
        if not use_fused(self.fused):
            return gru_update(ctx.input_gates, hidden_gates, z)
        if compile_wanted(self.compile, z.device):
            return compiled_gru_update(ctx.input_gates, hidden_gates, z, compile=self.compile)
        return gru_update_inplace(ctx.input_gates, hidden_gates, z)

    def _lstm(self, z: Tensor, ctx: ConvGPPNContext) -> Tensor:
        h, c = z.chunk(2, dim=1)
        hidden_gates = self.conv(h, ctx.hidden_weight, self.hidden_gates.bias)
        update = lstm_update_inplace if use_fused(self.fused) else lstm_update
        return update(ctx.input_gates, hidden_gates, c, self.forget_bound)

    def transposed_jacobian(self, z: Tensor, ctx: ConvGPPNContext) -> Callable[[Tensor], Tensor] | None:
        """w -> J^T w at z for the LSTM step; None for the GRU and on the plain path (autograd's products).

        With pre-activations s = conv(h, W) + input gates for [i, f, g, o], c' = b sig(f) c + sig(i) tanh(g) and
        h' = sig(o) tanh(c'), the cotangent [w_h, w_c] of [h', c'] gives dc' = w_c + w_h sig(o) (1 - tanh(c')^2),
        ds = [dc' tanh(g) sig'(i), dc' b c sig'(f), dc' sig(i) tanh'(g), w_h tanh(c') sig'(o)], and
        J^T w = [conv^T(ds, W), dc' b sig(f)]. The elementwise factors are computed once per solve at z; each
        product is then a few elementwise operations and one convolution with the transposed, flipped filter (the
        adjoint of a 'same' convolution, zero-padded or circular), against autograd's walk through the step's graph.
        """
        if self.cell != "lstm" or not self.fused:
            return None
        with torch.no_grad():
            h, c = z.chunk(2, dim=1)
            gates = self.conv(h, ctx.hidden_weight, self.hidden_gates.bias).add_(ctx.input_gates)
            input_gate, forget, candidate, output = gates.chunk(4, dim=1)
            input_gate, forget, output = input_gate.sigmoid(), forget.sigmoid(), output.sigmoid()
            candidate = candidate.tanh()
            bound = self.forget_bound
            cell = torch.tanh(bound * forget * c + input_gate * candidate)
            to_cell = output * (1 - cell * cell)  # d h' / d c'
            cell_factors = torch.cat(  # d c' / d (s_i, s_f, s_g)
                [
                    candidate * input_gate * (1 - input_gate),
                    bound * c * forget * (1 - forget),
                    input_gate * (1 - candidate * candidate),
                ],
                dim=1,
            )
            output_factor = cell * output * (1 - output)  # d h' / d s_o
            keep = bound * forget  # d c' / d c
            adjoint = ctx.hidden_weight.detach().transpose(0, 1).flip(2, 3)
        hidden = self.hidden

        def product(w: Tensor) -> Tensor:
            w_h, w_c = w[:, :hidden], w[:, hidden:]
            d_cell = torch.addcmul(w_c, w_h, to_cell)
            d_inputs = (cell_factors.unflatten(1, (3, hidden)) * d_cell.unsqueeze(1)).flatten(1, 2)
            d_gates = torch.cat([d_inputs, w_h * output_factor], dim=1)
            return torch.cat([self.conv(d_gates, adjoint), d_cell * keep], dim=1)

        return product

    def _h(self, z: Tensor) -> Tensor:
        """The hidden state h, what the policy reads (the LSTM's cell state c is not)."""
        return z[:, : self.hidden]

    def head(self, z: Tensor, ctx: ConvGPPNContext) -> Tensor:
        return self.policy(self._h(z))

    def value_map(self, z: Tensor) -> Tensor:
        """GPPN has no explicit value: show the best action's logit in each cell."""
        return self.policy(self._h(z)).amax(dim=1)
