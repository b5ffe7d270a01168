"""The fixed-point layer z* = f(z*): unrolled (K steps under autograd) or implicit (solve, then IFT backward).

``solve_fixed_point`` knows nothing about the model inside ``f``: it only needs a closure ``z -> step(z, ctx)``
whose parameters (and ctx) receive gradients through the returned tensor.

In implicit mode the forward solve runs under ``no_grad``; then f is applied once more, ``fz = f(z*)``, so that
train and eval return the same value and the output carries a graph to the parameters. A hook on the output
turns the incoming gradient g into the solution of w = J^T w + g (J = df/dz at z*), found by the backward solver
from vector-Jacobian products only, before autograd carries w on through f's graph to the parameters.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from idp_agents.fixed_point_config import FORWARD_DTYPES, FixedPointConfig, FixedPointInfo
from idp_agents.jacobian import (
    jacobian_frobenius_estimate,
    per_sample,
    per_sample_norm,
    spectral_radius_penalty,
)
from idp_agents.solvers import SolverBuffers, SolverInfo, anderson, get_solver

__all__ = [
    "FixedPointConfig",
    "FixedPointInfo",
    "NonConvergenceWarning",
    "solve_fixed_point",
]


def configured_solver(config: FixedPointConfig, name: str) -> Callable[..., tuple[Tensor, SolverInfo]]:
    """The solver ``name`` with the settings ``config`` gives it (Anderson's memory and mixing)."""
    solver = get_solver(name)
    if solver is anderson:
        return functools.partial(solver, m=config.anderson_memory, beta=config.anderson_mixing)
    return solver


def sample_weights(
    weight: float, unconverged: float | None, config: FixedPointConfig, forward: SolverInfo | None
) -> Tensor | float | None:
    """A regulariser's weight per sample: ``unconverged`` where the forward solve missed its tolerance (when it is
    set and there was a solve with a tolerance), ``weight`` elsewhere; None when every weight is zero."""
    if unconverged is None or forward is None or config.tol_fwd is None:
        return weight or None
    if weight == 0 and forward.flags()[0]:
        return None
    return torch.where(forward.converged, weight, unconverged).to(forward.final_residual.dtype)


def jacobian_weights(config: FixedPointConfig, forward: SolverInfo | None) -> Tensor | float | None:
    """The Jacobian regulariser's weight per sample (``jac_reg_weight``, ``jac_reg_unconverged``)."""
    return sample_weights(config.jac_reg_weight, config.jac_reg_unconverged, config, forward)


def spectral_weights(config: FixedPointConfig, forward: SolverInfo | None) -> Tensor | float | None:
    """The spectral penalty's weight per sample (``spectral_reg_weight``, ``spectral_reg_unconverged``)."""
    return sample_weights(config.spectral_reg_weight, config.spectral_reg_unconverged, config, forward)


class NonConvergenceWarning(RuntimeWarning):
    """A fixed-point solve ended above its tolerance: the returned point is not a fixed point, and the implicit
    gradient at it is only an approximation."""


def _check_convergence(info: SolverInfo, what: str, tol: float | None) -> None:
    """Warn (once per process, by the default warning filter) when a toleranced solve missed its tolerance."""
    if tol is None or info.flags()[0]:
        return
    warnings.warn(
        f"a {what} fixed-point solve ended above its tolerance for some samples; per-solve counts and residuals are "
        "in the planner output's info (training logs them per epoch as *_nonconverged): raise k_fwd/k_bwd, or keep "
        "the step contractive",
        NonConvergenceWarning,
        stacklevel=3,
    )


def _add_regularisers(
    info: FixedPointInfo,
    fz: Tensor,
    z: Tensor,
    jac_weight: Tensor | float | None,
    spectral_weight: Tensor | float | None,
    config: FixedPointConfig,
) -> None:
    """Set ``info.jac_loss`` to the weighted Frobenius and spectral penalties at z that are on (None if neither)."""
    losses = []
    if jac_weight is not None:
        losses.append(jacobian_frobenius_estimate(fz, z, jac_weight))
    if spectral_weight is not None:
        penalty, info.spectral_estimate = spectral_radius_penalty(
            fz, z, config.spectral_target, config.spectral_iterations, spectral_weight
        )
        losses.append(penalty)
    if losses:
        info.jac_loss = sum(losses[1:], losses[0])


def _check_divergence(info: SolverInfo, what: str, solver: str, policy: str) -> None:
    if not info.flags()[1]:
        return
    diverged = info.diverged
    worst = info.residuals[:, diverged].abs().nan_to_num(nan=float("inf")).max().item()
    message = (
        f"{what} solver {solver!r} diverged for {int(diverged.sum())} of {diverged.numel()} samples "
        f"(relative residual up to {worst:.3g} within {info.iterations} iterations)"
    )
    if policy == "raise":
        raise FloatingPointError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _jac_loss_due(config: FixedPointConfig, step: int | None) -> bool:
    """Whether training step ``step`` computes the regularisers (``jac_reg_every``'s schedule); every step when
    the schedule is 1."""
    weights = (
        config.jac_reg_weight,
        config.jac_reg_unconverged,
        config.spectral_reg_weight,
        config.spectral_reg_unconverged,
    )
    if not any(weights):
        return False
    if config.jac_reg_every == 1:
        return True
    if step is None:
        raise ValueError(
            f"jac_reg_every={config.jac_reg_every} regularises one training step in {config.jac_reg_every}: give the "
            "solve the step's index (planner(maps, step=i))"
        )
    return step % config.jac_reg_every == 0


TransposedJacobian = Callable[[Tensor], Callable[[Tensor], Tensor] | None]


def _attach_implicit_backward(
    fz: Tensor,
    z_star: Tensor,
    config: FixedPointConfig,
    info: FixedPointInfo,
    transposed_jacobian: TransposedJacobian | None = None,
    keep: Tensor | None = None,
    buffers: SolverBuffers | None = None,
) -> Tensor:
    """Return a view of fz whose incoming gradient g is replaced by the solution of w = J^T w + g, with g zeroed
    for the samples outside ``keep`` (B,) when given.

    The hook sits on a view downstream of fz, so the solver's own vector-Jacobian products (rooted at fz) never
    reach it: it fires exactly once per backward pass, and again, correctly, on a second retain_graph pass.
    The view also keeps the hook's closure (which holds fz) out of a reference cycle with fz.
    """
    solver = configured_solver(config, config.solver_bwd)

    def implicit_gradient(grad: Tensor | None) -> Tensor | None:
        if grad is None:
            return None
        if keep is not None:
            grad = grad * per_sample(keep, grad)

        product = None if transposed_jacobian is None else transposed_jacobian(z_star.detach())

        def backward_step(w: Tensor) -> Tensor:
            if product is not None:
                return product(w) + grad
            return torch.autograd.grad(fz, z_star, w, retain_graph=True)[0] + grad

        w, solver_info = solver(backward_step, grad, config.k_bwd, config.tol_bwd, buffers=buffers)
        if config.gradient_gain_cap is not None:
            w = w * _gain_limit(w, grad, config.gradient_gain_cap)
        info.backward.append(solver_info)
        _check_divergence(solver_info, "backward", config.solver_bwd, config.on_divergence)
        _check_convergence(solver_info, "backward", config.tol_bwd)
        return w

    out = fz.view_as(fz)
    out.register_hook(implicit_gradient)
    return out


def _gain_limit(w: Tensor, grad: Tensor, cap: float) -> Tensor:
    """Per-sample factor (broadcastable over w) that brings ||w|| down to at most cap * ||grad||."""
    limit, norm = cap * per_sample_norm(grad), per_sample_norm(w)
    factor = torch.where(norm > limit, limit / norm.clamp_min(torch.finfo(w.dtype).tiny), 1.0)
    return per_sample(factor, w)


def _damped_steps(f: Callable[[Tensor], Tensor], z: Tensor, fz: Tensor, config: FixedPointConfig) -> Tensor:
    """The phantom gradient's steps z <- z + lambda (f(z) - z), starting from z* with f(z*) already computed."""
    damping = config.phantom_damping
    z = z + damping * (fz - z)
    for _ in range(config.phantom_steps - 1):
        z = z + damping * (f(z) - z)
    return z


def _autocast_step(f: Callable[[Tensor], Tensor], z0: Tensor, dtype: torch.dtype) -> Callable[[Tensor], Tensor]:
    """f under autocast to ``dtype`` on z0's device, its output cast back to z0's dtype for the solver."""

    def f_autocast(z: Tensor) -> Tensor:
        with torch.autocast(device_type=z0.device.type, dtype=dtype):
            fz = f(z)
        return fz.to(z0.dtype)

    return f_autocast


Restriction = Callable[[Tensor], Callable[[Tensor], Tensor]]


def _solve_stragglers(
    restrict: Restriction,
    z_star: Tensor,
    info: SolverInfo,
    config: FixedPointConfig,
    buffers: SolverBuffers | None = None,
) -> tuple[Tensor, SolverInfo]:
    """Continue the samples of a toleranced forward solve that ended above ``tol_fwd`` (and did not diverge) for up
    to ``k_fwd_stragglers`` iterations, on their own, with ``solver_stragglers``; z* and an info covering both solves.

    One host read: their number, read with the first solve's flags (``SolverInfo.unfinished``), so the caller's
    flags check of a solve without stragglers costs nothing more. A straggler takes the continued iterate only where
    its residual is lower; one that diverges there keeps its first iterate and stays unconverged (the continuation is
    best effort: its divergence is not the solve's).
    """
    count = info.unfinished()
    if count == 0:
        return z_star, info
    index = torch.argsort(info.unfinished_mask.to(torch.uint8), descending=True, stable=True)[:count]  # no host read
    f = restrict(index)
    if config.forward_dtype is not None:
        f = _autocast_step(f, z_star, FORWARD_DTYPES[config.forward_dtype])
    z_more, more = configured_solver(config, config.solver_stragglers)(
        f, z_star[index], config.k_fwd_stragglers, config.tol_fwd, buffers=buffers
    )
    better = (more.final_residual < info.final_residual[index]).view(-1, *[1] * (z_more.dim() - 1))
    z_star = z_star.index_copy(0, index, torch.where(better, z_more, z_star[index]))
    final = info.final_residual.index_copy(0, index, torch.minimum(more.final_residual, info.final_residual[index]))
    merged = SolverInfo(
        iterations=info.iterations + more.iterations,
        residuals=torch.cat([info.residuals, final[None]]),
        converged=final <= config.tol_fwd,
        diverged=info.diverged,
    )
    return z_star, merged


def solve_fixed_point(
    f: Callable[[Tensor], Tensor],
    z0: Tensor,
    config: FixedPointConfig,
    transposed_jacobian: TransposedJacobian | None = None,
    restrict: Restriction | None = None,
    step: int | None = None,
    buffers: SolverBuffers | None = None,
) -> tuple[Tensor, FixedPointInfo]:
    """Find z = f(z) from z0 as ``config`` says; gradients reach whatever f closes over through the output.

    Unrolled: k_fwd applications of f under autograd. Implicit: the forward solver under no_grad, then one
    application of f with autograd and either the IFT backward hook or the phantom gradient's damped steps.
    ``transposed_jacobian(z_star)``, if given and not returning None, supplies w -> J^T w for the IFT backward
    solve in place of autograd's vector-Jacobian products through f's graph. ``restrict(indices)``, if given,
    returns f for those samples of the batch alone (a LongTensor of indices): the stragglers' continuation
    (``k_fwd_stragglers``) needs it. ``step``: the training step's index, for the regularisers' schedule
    (``jac_reg_every``). ``buffers``: the solvers' history buffers, reused across solves by their owner (a planner).
    """
    config.validate()
    training = torch.is_grad_enabled()
    jac_due = training and _jac_loss_due(config, step)
    if config.mode == "unrolled":
        z = z0
        for _ in range(config.k_fwd):
            z = f(z)
        info = FixedPointInfo(forward=None, jac_loss=None)
        jac_weight, spectral_weight = jacobian_weights(config, None), spectral_weights(config, None)
        if jac_due and (jac_weight is not None or spectral_weight is not None):
            # at the last layer's state; no solve, so no unconverged samples to weigh apart
            z_in = z.detach().requires_grad_()
            _add_regularisers(info, f(z_in), z_in, jac_weight, spectral_weight, config)
        return z, info

    with torch.no_grad():
        f_solve = f if config.forward_dtype is None else _autocast_step(f, z0, FORWARD_DTYPES[config.forward_dtype])
        solver = configured_solver(config, config.solver_fwd)
        z_star, forward_info = solver(f_solve, z0.detach(), config.k_fwd, config.tol_fwd, buffers=buffers)
        within_cap = forward_info
        if config.k_fwd_stragglers and config.tol_fwd is not None and restrict is not None:
            z_star, forward_info = _solve_stragglers(restrict, z_star, forward_info, config, buffers)
    _check_divergence(forward_info, "forward", config.solver_fwd, config.on_divergence)
    _check_convergence(forward_info, "forward", config.tol_fwd)
    info = FixedPointInfo(forward=forward_info, jac_loss=None)
    if config.tol_fwd is not None:
        info.over_cap = ~within_cap.converged
    if not training:
        fz = f(z_star)
        return (fz if config.gradient == "implicit" else _damped_steps(f, z_star, fz, config)), info

    jac_weight = jacobian_weights(config, within_cap) if jac_due else None
    spectral_weight = spectral_weights(config, within_cap) if jac_due else None
    regularised = jac_weight is not None or spectral_weight is not None
    z_star = z_star.requires_grad_(config.gradient == "implicit" or regularised)
    fz = f(z_star)
    if regularised:
        _add_regularisers(info, fz, z_star, jac_weight, spectral_weight, config)
    keep = None
    if config.drop_unconverged and config.tol_fwd is not None and not forward_info.flags()[0]:
        keep = forward_info.converged
    if config.gradient == "phantom":
        z = _damped_steps(f, z_star, fz, config)
        if keep is not None and z.requires_grad:
            z.register_hook(lambda grad: grad * per_sample(keep, grad))
        return z, info
    if not fz.requires_grad:
        return fz, info
    return _attach_implicit_backward(fz, z_star, config, info, transposed_jacobian, keep, buffers), info
