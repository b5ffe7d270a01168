"""Batched fixed-point solvers for z = f(z): forward iteration, Anderson acceleration and Broyden's method.

Every solver is a plain function ``solver(f, z0, max_iter, tol, ...) -> (z, info)`` (torchdeq style). ``f`` maps a
tensor of shape (B, ...) to the same shape; solvers flatten each sample internally, work on any device and
floating dtype, and build no autograd graph. An iteration is one evaluation of ``f``.

Convergence is measured every ``check_every`` iterations and at the last one, by the relative residual
``||f(z) - z|| / (||f(z)|| + 1e-12)`` of the iterate ``z`` at which ``f`` was evaluated. With ``tol`` set, a solve
stops once every sample has converged or diverged. No solver makes a synchronising read (``item``, boolean
indexing) on the CPU or CUDA: each check's "done" flag is read in host memory; on CUDA, where the device runs
behind the host, it is copied there without waiting (pinned memory and an event) and read at the next check, by
when the device has written it, so the host never waits for the device to drain its queue inside a solve. The price
there is at most ``check_every`` iterations past the check that saw every sample done; on the CPU the flag is read
at once. ``SolverInfo.flags()`` makes one synchronising read per solve, for a caller that needs "all converged" and
"any diverged" on the host.
Each solver returns, per sample, the checked iterate with the lowest residual, so a solver that degrades
(Anderson or Broyden overshooting, a step producing NaN) still returns its best point.

Anderson's and Broyden's history buffers are taken from a small cache keyed by shape, dtype and device and
given back after the solve, so repeated solves of one shape (every training step, every evaluation batch)
allocate nothing large; a solve running inside another (a backward solve during a forward one) gets its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SOLVERS", "SolverBuffers", "SolverInfo", "anderson", "broyden", "forward_iteration", "get_solver"]

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


class _ConvergenceMonitor:
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


def _validate(z0: Tensor, max_iter: int, tol: float | None, check_every: int) -> None:
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


def _flat(f: Callable[[Tensor], Tensor], z0: Tensor) -> Callable[[Tensor], Tensor]:
    """Wrap f to act on (B, n) flattened samples, checking that it preserves the state's shape."""
    shape = z0.shape

    def f_flat(x: Tensor) -> Tensor:
        fz = f(x.reshape(shape))
        if fz.shape != shape:
            raise ValueError(f"f must return the shape of its input {tuple(shape)}, got {tuple(fz.shape)}")
        return fz.reshape(shape[0], -1)

    return f_flat


@torch.no_grad()
def forward_iteration(
    f: Callable[[Tensor], Tensor],
    z0: Tensor,
    max_iter: int,
    tol: float | None = None,
    check_every: int = 5,
    buffers: SolverBuffers | None = None,
) -> tuple[Tensor, SolverInfo]:
    """Plain iteration z <- f(z); returns the best checked iterate (z after max_iter - 1 steps when none degrade).
    It keeps no history, so ``buffers`` (taken for a uniform signature) is unused."""
    _validate(z0, max_iter, tol, check_every)
    f_flat = _flat(f, z0)
    x = z0.reshape(z0.shape[0], -1)
    monitor = _ConvergenceMonitor(x, max_iter, tol, check_every)
    for iteration in range(1, max_iter + 1):
        fx = f_flat(x)
        if monitor.observe(iteration, x, fx):
            break
        x = fx
    return monitor.result(z0.shape)


@torch.no_grad()
def anderson(
    f: Callable[[Tensor], Tensor],
    z0: Tensor,
    max_iter: int,
    tol: float | None = None,
    m: int = 5,
    lam: float = 1e-4,
    beta: float = 1.0,
    check_every: int = 5,
    buffers: SolverBuffers | None = None,
) -> tuple[Tensor, SolverInfo]:
    """Anderson acceleration with memory ``m``, mixing ``beta`` and Tikhonov regularisation ``lam``.

    Each step finds, per sample, the weights alpha (sum 1) minimising ||G alpha||^2 + reg ||alpha||^2 over the last
    n <= m residuals G = F - X: alpha = H^-1 1 / (1^T H^-1 1) with H = G G^T + reg I, which is symmetric positive
    definite, so a Cholesky factorisation and two triangular solves find it without reading anything on the host
    (LU-based solves check their pivots on the host on the CPU). A sample whose H does not factor takes the plain
    step x <- f(x) instead. The regularisation is ``lam`` times the mean squared residual norm in the history, so it
    is independent of the state's scale.
    """
    _validate(z0, max_iter, tol, check_every)
    if m < 1:
        raise ValueError(f"Anderson memory m must be at least 1, got {m}")
    if lam < 0:
        raise ValueError(f"Anderson regularisation lam must be non-negative, got {lam}")
    if not 0 < beta <= 1:
        raise ValueError(f"Anderson mixing beta must lie in (0, 1], got {beta}")
    f_flat = _flat(f, z0)
    batch = z0.shape[0]
    x = z0.reshape(batch, -1)

    def build() -> tuple[Tensor, ...]:
        # Every entry of the history and the Gram matrix is written before it is read: empty is enough.
        history = x.new_empty(batch, m, x.shape[1])
        identity = torch.eye(m, dtype=x.dtype, device=x.device).expand(batch, m, m)
        return history, torch.empty_like(history), x.new_empty(batch, m, m), identity, x.new_ones(batch, m, 1)

    key = ("anderson", batch, x.shape[1], m, x.dtype, x.device)
    buffers = buffers or SolverBuffers()
    workspace = buffers.take(key, build)
    history_x, history_g, gram, identity, ones = workspace
    tiny = torch.finfo(x.dtype).tiny ** 0.5
    monitor = _ConvergenceMonitor(x, max_iter, tol, check_every)
    for iteration in range(1, max_iter + 1):
        fx = f_flat(x)
        if monitor.observe(iteration, x, fx) or iteration == max_iter:
            break
        slot = (iteration - 1) % m
        n = min(iteration, m)
        history_x[:, slot] = x
        history_g[:, slot] = fx - x
        xs, gs = history_x[:, :n], history_g[:, :n]
        new_row = torch.bmm(history_g[:, slot, None], gs.transpose(1, 2))[:, 0]  # this layout is fast on CPU
        gram[:, slot, :n] = new_row
        gram[:, :n, slot] = new_row
        reg = lam * torch.diagonal(gram[:, :n, :n], dim1=1, dim2=2).mean(dim=1) + tiny
        h = gram[:, :n, :n] + reg[:, None, None] * identity[:, :n, :n]
        alpha = _anderson_weights(h, ones[:, :n], fallback=identity[0, slot, :n])
        # beta * sum(alpha F) + (1 - beta) * sum(alpha X), with F = X + G
        x = torch.bmm(alpha[:, None], xs)[:, 0] + beta * torch.bmm(alpha[:, None], gs)[:, 0]
    buffers.give(key, workspace)
    return monitor.result(z0.shape)


def _anderson_weights(h: Tensor, ones: Tensor, fallback: Tensor) -> Tensor:
    """(B, n) weights H^-1 1 / (1^T H^-1 1) for the SPD matrices H (B, n, n); ``fallback`` (n,) where H does not
    factor. Cholesky and triangular solves only: no host reads."""
    factor, failed = torch.linalg.cholesky_ex(h)
    y = torch.linalg.solve_triangular(factor, ones, upper=False)
    y = torch.linalg.solve_triangular(factor.mT, y, upper=True)[..., 0]
    alpha = y / y.sum(dim=1, keepdim=True)
    return torch.where((failed == 0)[:, None], alpha, fallback)


@torch.no_grad()
def broyden(
    f: Callable[[Tensor], Tensor],
    z0: Tensor,
    max_iter: int,
    tol: float | None = None,
    check_every: int = 5,
    buffers: SolverBuffers | None = None,
) -> tuple[Tensor, SolverInfo]:
    """Broyden's ("good") method on g(z) = f(z) - z with a low-rank inverse Jacobian -I + U^T V.

    The rank-one updates (Sherman-Morrison form) live in buffers preallocated for the whole budget; a sample whose
    update is degenerate (s^T B y ~ 0) skips it. Steps are full Newton-like steps without line search.
    """
    _validate(z0, max_iter, tol, check_every)
    f_flat = _flat(f, z0)
    batch = z0.shape[0]
    x = z0.reshape(batch, -1)
    rank = max(max_iter - 1, 1)
    key = ("broyden", batch, x.shape[1], rank, x.dtype, x.device)
    # Slot r is written before any product reads it (products read slots < r): empty is enough.
    buffers = buffers or SolverBuffers()
    workspace = buffers.take(key, lambda: (x.new_empty(batch, rank, x.shape[1]), x.new_empty(batch, rank, x.shape[1])))
    us, vts = workspace
    tiny = torch.finfo(x.dtype).tiny ** 0.5
    monitor = _ConvergenceMonitor(x, max_iter, tol, check_every)

    def low_rank_product(v: Tensor, left: Tensor, right: Tensor) -> Tensor:
        """sum_k (left_k . v) right_k per sample, as (B, 1, n) bmm products (the fast layout on CPU)."""
        coefficients = torch.bmm(v[:, None], left.transpose(1, 2))
        return torch.bmm(coefficients, right)[:, 0]

    def inverse_jacobian_times(v: Tensor, r: int) -> Tensor:
        return -v + low_rank_product(v, vts[:, :r], us[:, :r])

    def times_inverse_jacobian(v: Tensor, r: int) -> Tensor:
        return -v + low_rank_product(v, us[:, :r], vts[:, :r])

    fx = f_flat(x)
    gx = fx - x
    if monitor.observe(1, x, fx):
        buffers.give(key, workspace)
        return monitor.result(z0.shape)
    for iteration in range(2, max_iter + 1):
        r = iteration - 2
        step = -inverse_jacobian_times(gx, r)
        x_new = x + step
        fx_new = f_flat(x_new)
        gx_new = fx_new - x_new
        if monitor.observe(iteration, x_new, fx_new) or iteration == max_iter:
            break
        dg = gx_new - gx
        vt = times_inverse_jacobian(step, r)
        denominator = (vt * dg).sum(dim=1)
        usable = denominator.abs() > tiny
        safe = torch.where(usable, denominator, torch.ones_like(denominator))
        u = (step - inverse_jacobian_times(dg, r)) / safe[:, None]
        us[:, r] = torch.where(usable[:, None], u, 0.0)
        vts[:, r] = torch.where(usable[:, None], vt, 0.0)
        x, gx = x_new, gx_new
    buffers.give(key, workspace)
    return monitor.result(z0.shape)


SOLVERS: dict[str, Callable[..., tuple[Tensor, SolverInfo]]] = {
    "forward": forward_iteration,
    "anderson": anderson,
    "broyden": broyden,
}


def get_solver(name: str) -> Callable[..., tuple[Tensor, SolverInfo]]:
    """The solver registered under ``name``."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; valid solvers: {', '.join(sorted(SOLVERS))}") from None
