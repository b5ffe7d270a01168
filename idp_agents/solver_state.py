"""What every fixed-point solver shares: `SolverInfo` (iterations, residuals, converged, diverged), the
`ConvergenceMonitor` that checks residuals without synchronising reads and keeps each sample's best iterate, the
`SolverBuffers` a caller owns for the solvers' histories, and the checks of a solve's arguments. The conventions
(residual, checks, host reads) are described in `idp_agents.solvers`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

RESIDUAL_EPS = 1e-12
EXPLOSION_FACTOR = 1e3
EXPLOSION_LIMIT = 1e6
WORKSPACE_SLOTS = 8


class SolverBuffers:
    """History buffers that Anderson and Broyden reuse from one solve to the next, owned by whoever passes them
    (a `Planner` keeps one; a solve given none allocates its own). Keyed by solver, shape, dtype and device; a
    set in use is taken out, so a solve nested in another's step gets its own; at most ``slots`` sets are kept."""

    def __init__(self, slots: int = WORKSPACE_SLOTS) -> None:
        self.slots = slots
        self.sets: dict[tuple, tuple[Tensor, ...]] = {}

    def take(self, key: tuple, build: Callable[[], tuple[Tensor, ...]]) -> tuple[Tensor, ...]:
        """Buffers for ``key`` (removed while in use), or freshly built ones. Buffers made under
        ``torch.inference_mode`` cannot be written outside it, so the mode is part of the key."""
        buffers = self.sets.pop((*key, torch.is_inference_mode_enabled()), None)
        return build() if buffers is None else buffers

    def give(self, key: tuple, buffers: tuple[Tensor, ...]) -> None:
        """Return buffers for the next solve, dropping the oldest set beyond ``slots``."""
        self.sets[(*key, torch.is_inference_mode_enabled())] = buffers
        while len(self.sets) > self.slots:
            self.sets.pop(next(iter(self.sets)))

    def clear(self) -> None:
        self.sets.clear()

    def __deepcopy__(self, memo) -> SolverBuffers:  # a copied planner starts with its own, empty buffers
        return SolverBuffers(self.slots)


def _read_host(count: Tensor, *flags: Tensor) -> tuple[int, tuple[bool, ...]]:
    """A non-negative integer scalar and boolean scalars read on the host in one transfer (packed into one integer,
    the flags in its low bits, read with ``item``, the op that profilers count as a host synchronisation on every
    device)."""
    bits = sum((flag.to(torch.int64) << i for i, flag in enumerate(flags)), count.to(torch.int64) << len(flags))
    packed = int(bits.item())
    return packed >> len(flags), tuple(bool(packed >> i & 1) for i in range(len(flags)))


class _HostCopy:
    """A boolean scalar in host memory: on the CPU the flag itself; on CUDA a copy made without making the host wait,
    whose ``read`` waits for the copy alone (an event recorded after it), not for work queued since; other
    accelerators copy synchronously."""

    def __init__(self, flag: Tensor) -> None:
        self.event = None
        if flag.device.type == "cpu":
            self.host = flag
            return
        cuda = flag.is_cuda
        self.host = torch.empty((), dtype=torch.bool, pin_memory=cuda)
        self.host.copy_(flag, non_blocking=cuda)
        if cuda:
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(flag.device))  # the stream that made the flag and copies it

    def read(self) -> bool:
        if self.event is not None:
            self.event.synchronize()
        return bool(self.host.numpy())  # host memory: no device read, nothing a profiler counts as a sync


@dataclass
class SolverInfo:
    """What a solve did: iterations run, per-check residuals, and which samples converged or diverged.

    ``residuals`` has one row per convergence check; its last row is the residual of the returned iterate (the
    best one seen), which equals the last check's residual unless the solver degraded.
    """

    iterations: int
    residuals: Tensor
    converged: Tensor
    diverged: Tensor
    host_flags: tuple[bool, bool] | None = None  # (converged.all(), diverged.any()), once read on the host
    host_unfinished: int | None = None  # samples neither converged nor diverged, read with host_flags

    def flags(self) -> tuple[bool, bool]:
        """(every sample converged, some sample diverged) as Python bools, read on the first call in one transfer
        (a host synchronisation) with ``unfinished()``, and kept."""
        if self.host_flags is None:
            self._read_host()
        return self.host_flags

    def unfinished(self) -> int:
        """How many samples neither converged nor diverged: read with ``flags()`` in one transfer, and kept."""
        if self.host_unfinished is None:
            self._read_host()
        return self.host_unfinished

    @property
    def unfinished_mask(self) -> Tensor:
        """(B,) the samples that neither converged nor diverged (on the device)."""
        return ~self.converged & ~self.diverged

    def _read_host(self) -> None:
        count = self.unfinished_mask.sum()
        self.host_unfinished, self.host_flags = _read_host(count, self.converged.all(), self.diverged.any())

    @property
    def final_residual(self) -> Tensor:
        """(B,) relative residual of the returned iterate."""
        return self.residuals[-1]


def _lagged_stop(device: torch.device) -> bool:
    """Whether a solve on ``device`` reads each check's "done" flag at the next check rather than at once: on CUDA,
    where reading it at once would wait for the queue to drain; the CPU's flag is in host memory once computed."""
    return device.type == "cuda"


class ConvergenceMonitor:
    """Records residuals at checks, keeps the best iterate per sample and flags divergence, without host syncs;
    with a tolerance, says to stop at the check that saw every sample converged or diverged (at the next one where
    that flag is read late, ``_lagged_stop``)."""

    def __init__(self, x0: Tensor, max_iter: int, tol: float | None, check_every: int) -> None:
        self.max_iter = max_iter
        self.tol = tol
        self.check_every = check_every
        batch = x0.shape[0]
        self.best = x0
        self.best_residual = x0.new_full((batch,), float("inf"))
        self.diverged = torch.zeros(batch, dtype=torch.bool, device=x0.device)
        self.reference: Tensor | None = None
        self.residuals: list[Tensor] = []
        self.iterations = 0
        self.lagged = _lagged_stop(x0.device)
        self.pending: _HostCopy | None = None  # the previous check's "done" flag, on its way to the host

    def observe(self, iteration: int, x: Tensor, fx: Tensor) -> bool:
        """Take note of f(x) at 1-based ``iteration``; True when every sample has converged or diverged."""
        self.iterations = iteration
        if iteration % self.check_every != 0 and iteration != self.max_iter:
            return False
        absolute = torch.linalg.vector_norm(fx - x, dim=1)
        f_norm = torch.linalg.vector_norm(fx, dim=1)
        relative = absolute / (f_norm + RESIDUAL_EPS)
        if self.reference is None:
            # Explosion is judged on the absolute residual: the relative one saturates near 1 when iterates grow.
            # The floor keeps round-off from counting as explosion when z0 is already a fixed point.
            eps = torch.finfo(x.dtype).eps
            self.reference = absolute + eps * f_norm + torch.finfo(x.dtype).tiny
        exploded = (absolute > EXPLOSION_FACTOR * self.reference) | (relative > EXPLOSION_LIMIT)
        self.diverged |= ~torch.isfinite(relative) | exploded
        improved = relative < self.best_residual
        self.best = torch.where(improved[:, None], x, self.best)
        self.best_residual = torch.where(improved, relative, self.best_residual)
        self.residuals.append(relative)
        if self.tol is None:
            return False
        done = _HostCopy(((self.best_residual <= self.tol) | self.diverged).all())
        if not self.lagged:
            return done.read()
        previous, self.pending = self.pending, done
        return previous is not None and previous.read()

    def result(self, shape: torch.Size) -> tuple[Tensor, SolverInfo]:
        residuals = torch.stack(self.residuals)
        residuals[-1] = self.best_residual  # the returned iterate's: the last check's unless the solver degraded
        if self.tol is None:
            converged = torch.zeros_like(self.diverged)
        else:
            converged = self.best_residual <= self.tol
        info = SolverInfo(self.iterations, residuals, converged, self.diverged)
        return self.best.reshape(shape), info


def validate_solve(z0: Tensor, max_iter: int, tol: float | None, check_every: int) -> None:
    if z0.dim() < 1 or z0.shape[0] == 0:
        raise ValueError(f"z0 must have a non-empty batch dimension first, got shape {tuple(z0.shape)}")
    if not z0.is_floating_point():
        raise ValueError(f"z0 must be a floating-point tensor, got dtype {z0.dtype}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    if check_every < 1:
        raise ValueError(f"check_every must be at least 1, got {check_every}")
    if tol is not None and tol < 0:
        raise ValueError(f"tol must be non-negative or None, got {tol}")


def flat_step(f: Callable[[Tensor], Tensor], z0: Tensor) -> Callable[[Tensor], Tensor]:
    """Wrap f to act on (B, n) flattened samples, checking that it preserves the state's shape."""
    shape = z0.shape

    def f_flat(x: Tensor) -> Tensor:
        fz = f(x.reshape(shape))
        if fz.shape != shape:
            raise ValueError(f"f must return the shape of its input {tuple(shape)}, got {tuple(fz.shape)}")
        return fz.reshape(shape[0], -1)

    return f_flat
