"""Fused Bellman steps (forward kernels for solves, evaluation and VIN's training step), and their switches.

VIN and SymVIN: Q_c = sum_s u_{c,s} r(x+s) + sum_s w_{c,s} v(x+s). The reward's share sum_s u_{c,s} r(x+s) is fixed
for a solve: it is computed once, as one (C, B*H*W) matrix, and each iteration adds to it a small matrix (C x F)
times the F shifted taps of v at each cell (one addmm), then takes the max over channels, in blocks of cells: the
iteration's Q is never written whole, only a cache-sized block of it. Keeping the reward's share costs one Q-sized
tensor per solve and halves each iteration's arithmetic (VIN, 5x5: 25 taps a cell instead of 50; measured 1.23x
faster per iteration at 15x15 and 1.49x at 49x49, batch 32, one CPU thread, docs/results.md).
ConvGPPN: the GRU or LSTM gate arithmetic runs in place on the hidden-gate convolution's output.

Switches, attributes of each step (`BellmanStep`), no global state: ``step.fused = False`` (or ``with
plain_steps(planner):``) forces the plain conv-then-max path. ConvGPPN's in-place gates and SymVIN's tap max run
only when autograd is off; VIN's tap max also computes the forward of its training step, inside ``bellman_max``
(whose backward is its own, see there). ``step.compile`` chooses torch.compile for the fused kernels: ``auto``
(default) compiles on CUDA only, because on the 2-core AVX2 CPU it measured no faster than the eager fused kernels;
``1`` compiles everywhere; ``0`` never. A compilation failure falls back to the eager kernel with a warning, and
that kernel then stays eager for the rest of the process.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "COMPILE_CHOICES",
    "MaybeCompiled",
    "TapMax",
    "compile_wanted",
    "fold_taps",
    "gru_update",
    "gru_update_inplace",
    "lstm_update",
    "lstm_update_inplace",
    "plain_steps",
    "shifted_taps",
    "tap_windows",
    "use_fused",
]

COMPILE_CHOICES = ("auto", "0", "1")
CHUNK_BYTES = 2**21  # a block of Q this size stays in cache between the matmul and the max


@contextmanager
def plain_steps(*modules: torch.nn.Module) -> Iterator[None]:
    """Run the block with the steps in ``modules`` (planners or steps) on their plain (reference) path."""
    steps = [m for module in modules for m in module.modules() if hasattr(m, "fused")]
    if not steps:
        raise ValueError("plain_steps needs the planners (or steps) to switch: plain_steps(planner)")
    previous = [step.fused for step in steps]
    for step in steps:
        step.fused = False
    try:
        yield
    finally:
        for step, fused in zip(steps, previous, strict=True):
            step.fused = fused


def use_fused(step_fused: bool) -> bool:
    """True when a step whose own flag is ``step_fused`` should take its fused path now (autograd off)."""
    return step_fused and not torch.is_grad_enabled()


def compile_wanted(choice: str, device: torch.device) -> bool:
    """Whether a step's ``compile`` choice asks for torch.compile on ``device``."""
    if choice not in COMPILE_CHOICES:
        raise ValueError(f"a step's compile must be one of {COMPILE_CHOICES}, got {choice!r}")
    return choice == "1" or (choice == "auto" and device.type == "cuda")


class MaybeCompiled:
    """Call ``fn`` through torch.compile when the caller's ``compile`` choice asks for it on the first argument's
    device.

    The first failure to compile or run compiled disables compilation for this function (with a warning) and
    falls back to ``fn``, which is the reference the tests compare against.
    """

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        self.fn = fn
        self.compiled: Callable[..., Tensor] | None = None
        self.failed = False

    def __call__(self, *args: Tensor, compile: str = "auto") -> Tensor:
        if not self.failed and compile_wanted(compile, args[0].device):
            try:
                if self.compiled is None:
                    self.compiled = torch.compile(self.fn)
                return self.compiled(*args)
            except Exception as exc:  # noqa: BLE001 - any compiler failure means: run eagerly
                self.failed = True
                warnings.warn(
                    f"torch.compile of {self.fn.__name__} failed ({type(exc).__name__}: {exc}); running it eagerly",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self.fn(*args)


def tap_windows(x: Tensor, kernel: int, topology: str) -> Tensor:
    """The k*k shifted copies of x (B, C, H, W) as a strided view (C, k, k, B, H, W) of x padded by k//2.

    Entry (c, i, j, b, y, x) is x[b, c, y + i - k//2, x + j - k//2]: zero outside a plane, wrapped on a torus.
    """
    batch, channels, height, width = x.shape
    pad = kernel // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="circular" if topology == "torus" else "constant")
    s_b, s_c, s_h, s_w = padded.stride()
    return padded.as_strided(
        (channels, kernel, kernel, batch, height, width), (s_c, s_h, s_w, s_b, s_h, s_w), padded.storage_offset()
    )


def shifted_taps(x: Tensor, kernel: int, topology: str, out: Tensor) -> Tensor:
    """Write the k*k shifted copies of x (B, C, H, W) into out (C*k*k, B*H*W), rows in conv2d's (c, i, j) order,
    so ``weight.reshape(C_out, -1) @ out`` equals a 'same' conv2d with that weight, one column per cell."""
    windows = tap_windows(x, kernel, topology)
    out.view(windows.shape).copy_(windows)
    return out


def _tap_max_block(q_reward: Tensor, weight: Tensor, taps: Tensor, copies: int) -> Tensor:
    """max over the ``copies`` groups of rows of q_reward + weight @ taps: (copies * G, n) + (copies * G, F) x (F, n)
    -> (G, n)."""
    q = torch.addmm(q_reward, weight, taps)
    return q.view(copies, -1, q.shape[-1]).amax(dim=0)


def _tap_max_indices_block(q_reward: Tensor, weight: Tensor, taps: Tensor, copies: int) -> tuple[Tensor, Tensor]:
    """`_tap_max_block` and the maximal copy of each output (the first one on a tie)."""
    q = torch.addmm(q_reward, weight, taps)
    return q.view(copies, -1, q.shape[-1]).max(dim=0)


_compiled_tap_max = MaybeCompiled(_tap_max_block)


class TapMax:
    """The fused VIN/SymVIN step for one solve: v' = max over copies of (W_r R + W_v V), R and V shifted taps.

    ``weight_r`` (C, C_r, k, k) and ``weight_v`` (C, G, k, k) are conv2d weights with C = copies * G output
    channels, channel c = copy * G + g; the reward (B, C_r, H, W) is fixed for the solve, and so is its share of
    Q, W_r R, kept as ``q_reward`` (C, B*H*W) (computed here, or taken from ``q_reward`` (B, C, H, W) when the
    caller has it). Calling it on v (B, G, H, W) returns the (B, G, H, W) maximum over
    copies, computed in blocks of whole samples: each block's taps of v are written just before its product reads
    them, while they are in cache (on CUDA, one block).
    """

    def __init__(
        self,
        reward: Tensor,
        weight_r: Tensor,
        weight_v: Tensor,
        copies: int,
        topology: str,
        q_reward: Tensor | None = None,
        compile: str = "auto",
    ) -> None:
        reward, weight_r, weight_v = reward.detach(), weight_r.detach(), weight_v.detach()
        self.compile = compile
        self.kernel = weight_v.shape[-1]
        if weight_r.shape[-1] != self.kernel:
            raise ValueError(f"reward and value kernels differ: {weight_r.shape[-1]} vs {self.kernel}")
        self.copies = copies
        self.topology = topology
        self.groups = weight_v.shape[1]
        self.shape = (reward.shape[0], self.groups, *reward.shape[2:])
        cells = reward.shape[0] * reward.shape[2] * reward.shape[3]
        if q_reward is None:
            reward_taps = shifted_taps(reward, self.kernel, topology, reward.new_empty(weight_r[0].numel(), cells))
            q_reward = weight_r.flatten(1) @ reward_taps
        else:
            q_reward = q_reward.detach().transpose(0, 1).reshape(weight_v.shape[0], cells)
        # in the reward's dtype also under autocast, where the product may come out in lower precision: each
        # iteration's addmm then casts all three operands alike (CUDA) or none (the CPU, which does not autocast it)
        self.q_reward = q_reward.to(reward.dtype)
        self.weight = weight_v.flatten(1).contiguous()
        batch, sample = reward.shape[0], reward.shape[2] * reward.shape[3]
        if reward.device.type == "cuda":
            self.samples = batch  # memory is plentiful and launches are not: one matmul
        else:
            chunk = CHUNK_BYTES // (self.weight.shape[0] * reward.element_size())  # cells whose Q fits in cache
            self.samples = min(batch, max(1, chunk // sample))
        self.taps = reward.new_empty(self.weight.shape[1], self.samples * sample)

    def __call__(self, v: Tensor, indices: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """v' = the maximum over copies; with ``indices``, also the maximal copy of each output (B, G, H, W) as
        uint8 (int64 beyond 256 copies), the first one on a tie."""
        if tuple(v.shape) != self.shape:
            raise ValueError(f"value state must have shape {self.shape}, got {tuple(v.shape)}")
        windows = tap_windows(v, self.kernel, self.topology)
        batch, sample = v.shape[0], v.shape[2] * v.shape[3]
        if not indices and self.samples == batch:
            self.taps.view(windows.shape).copy_(windows)
            return self._cells_to_batch(
                _compiled_tap_max(self.q_reward, self.weight, self.taps, self.copies, compile=self.compile)
            )
        out = v.new_empty(self.groups, batch * sample)
        index_dtype = torch.uint8 if self.copies <= 256 else torch.int64
        best = v.new_empty(self.groups, batch * sample, dtype=index_dtype) if indices else None
        for first in range(0, batch, self.samples):
            last = min(batch, first + self.samples)
            cells = slice(first * sample, last * sample)
            block = self.taps[:, : cells.stop - cells.start]
            block.view(*windows.shape[:3], last - first, *windows.shape[4:]).copy_(windows[:, :, :, first:last])
            if indices:
                values, where = _tap_max_indices_block(self.q_reward[:, cells], self.weight, block, self.copies)
                best[:, cells] = where
            else:
                values = _tap_max_block(self.q_reward[:, cells], self.weight, block, self.copies)
            out[:, cells] = values
        if indices:
            return self._cells_to_batch(out), self._cells_to_batch(best)
        return self._cells_to_batch(out)

    def _cells_to_batch(self, x: Tensor) -> Tensor:
        """(G, B*H*W) -> (B, G, H, W), contiguous."""
        batch, groups, height, width = self.shape
        return x.view(groups, batch, height, width).transpose(0, 1).contiguous()


def fold_taps(taps: Tensor, height: int, width: int, kernel: int, topology: str) -> Tensor:
    """The transpose of `shifted_taps` per sample: (B, C*k*k, H*W) tap values summed back onto (B, C, H, W).

    Contributions that ``shifted_taps`` read from the zero padding are dropped on a plane and wrapped on a torus.
    """
    pad = kernel // 2
    if topology != "torus" or pad == 0:
        return F.fold(taps, (height, width), kernel, padding=pad)
    full = F.fold(taps, (height + 2 * pad, width + 2 * pad), kernel)
    rows = (torch.arange(height + 2 * pad, device=taps.device) - pad) % height
    cols = (torch.arange(width + 2 * pad, device=taps.device) - pad) % width
    wrapped = full.new_zeros(*full.shape[:2], height, width + 2 * pad).index_add_(2, rows, full)
    return wrapped.new_zeros(*full.shape[:2], height, width).index_add_(3, cols, wrapped)


def gru_update_inplace(input_gates: Tensor, hidden_gates: Tensor, z: Tensor) -> Tensor:
    """ConvGRU update candidate + update * (z - candidate), computed in place in ``hidden_gates`` (overwritten).

    Gates are [reset, update, candidate] along dim 1; tanh(c) is taken as 2 sigmoid(2c) - 1, about three times
    cheaper than tanh on an AVX2 CPU and equal to it within float rounding.
    """
    hidden = z.shape[1]
    reset_update = hidden_gates[:, : 2 * hidden].add_(input_gates[:, : 2 * hidden]).sigmoid_()
    reset, update = reset_update[:, :hidden], reset_update[:, hidden:]
    candidate = hidden_gates[:, 2 * hidden :].mul_(reset).add_(input_gates[:, 2 * hidden :])
    candidate = candidate.mul_(2).sigmoid_().mul_(2).sub_(1)
    return torch.lerp(candidate, z, update)


def lstm_update(input_gates: Tensor, hidden_gates: Tensor, c: Tensor, forget_bound: float) -> Tensor:
    """The out-of-place ConvLSTM update [h', c'], c' = b sigmoid(f) c + sigmoid(i) tanh(g), h' = sigmoid(o) tanh(c'):
    the plain (reference, autograd) path. Gates are [input, forget, candidate, output] (torch.nn.LSTMCell's order)."""
    input_gate, forget, candidate, output = (input_gates + hidden_gates).chunk(4, dim=1)
    c = forget_bound * torch.sigmoid(forget) * c + torch.sigmoid(input_gate) * torch.tanh(candidate)
    return torch.cat([torch.sigmoid(output) * torch.tanh(c), c], dim=1)


def lstm_update_inplace(input_gates: Tensor, hidden_gates: Tensor, c: Tensor, forget_bound: float) -> Tensor:
    """`lstm_update` with its gate arithmetic in place in ``hidden_gates`` (overwritten); tanh is taken as
    2 sigmoid(2x) - 1."""
    hidden = c.shape[1]
    gates = hidden_gates.add_(input_gates)
    input_gate, forget, candidate, output = gates.chunk(4, dim=1)
    gates[:, : 2 * hidden].sigmoid_()
    output.sigmoid_()
    if forget_bound != 1:
        forget.mul_(forget_bound)
    candidate.mul_(2).sigmoid_().mul_(2).sub_(1)
    out = c.new_empty(c.shape[0], 2 * hidden, *c.shape[2:])
    h_new, c_new = out[:, :hidden], out[:, hidden:]
    torch.mul(forget, c, out=c_new).addcmul_(input_gate, candidate)
    torch.mul(c_new, 2, out=h_new).sigmoid_().mul_(2).sub_(1).mul_(output)
    return out


def gru_update(input_gates: Tensor, hidden_gates: Tensor, z: Tensor) -> Tensor:
    """The out-of-place ConvGRU update: the plain (reference, autograd) path, and the form torch.compile fuses into
    one kernel. Gates are [reset, update, candidate] along dim 1."""
    x_reset, x_update, x_candidate = input_gates.chunk(3, dim=1)
    h_reset, h_update, h_candidate = hidden_gates.chunk(3, dim=1)
    reset = torch.sigmoid(x_reset + h_reset)
    update = torch.sigmoid(x_update + h_update)
    candidate = torch.tanh(x_candidate + reset * h_candidate)
    return candidate + update * (z - candidate)


compiled_gru_update = MaybeCompiled(gru_update)
