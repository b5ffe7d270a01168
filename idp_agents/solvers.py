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

Anderson's and Broyden's history buffers come from the ``buffers`` (`SolverBuffers`) their caller owns and are
given back after the solve, so repeated solves of one shape (every training step, every evaluation batch)
allocate nothing large; a solve running inside another (a backward solve during a forward one) gets its own. What
the solvers share (their info, the convergence monitor, the buffers) is in `idp_agents.solver_state`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from idp_agents.solver_state import (
    RESIDUAL_EPS,
    ConvergenceMonitor,
    SolverBuffers,
    SolverInfo,
    flat_step,
    validate_solve,
)

__all__ = [
    "RESIDUAL_EPS",
    "SOLVERS",
    "SolverBuffers",
    "SolverInfo",
    "anderson",
    "broyden",
    "forward_iteration",
    "get_solver",
]


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
    validate_solve(z0, max_iter, tol, check_every)
    f_flat = flat_step(f, z0)
    x = z0.reshape(z0.shape[0], -1)
    monitor = ConvergenceMonitor(x, max_iter, tol, check_every)
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
    validate_solve(z0, max_iter, tol, check_every)
    if m < 1:
        raise ValueError(f"Anderson memory m must be at least 1, got {m}")
    if lam < 0:
        raise ValueError(f"Anderson regularisation lam must be non-negative, got {lam}")
    if not 0 < beta <= 1:
        raise ValueError(f"Anderson mixing beta must lie in (0, 1], got {beta}")
    f_flat = flat_step(f, z0)
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
    monitor = ConvergenceMonitor(x, max_iter, tol, check_every)
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
    validate_solve(z0, max_iter, tol, check_every)
    f_flat = flat_step(f, z0)
    batch = z0.shape[0]
    x = z0.reshape(batch, -1)
    rank = max(max_iter - 1, 1)
    key = ("broyden", batch, x.shape[1], rank, x.dtype, x.device)
    # Slot r is written before any product reads it (products read slots < r): empty is enough.
    buffers = buffers or SolverBuffers()
    workspace = buffers.take(key, lambda: (x.new_empty(batch, rank, x.shape[1]), x.new_empty(batch, rank, x.shape[1])))
    us, vts = workspace
    tiny = torch.finfo(x.dtype).tiny ** 0.5
    monitor = ConvergenceMonitor(x, max_iter, tol, check_every)

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
