"""What the step's Jacobian J = df/dz says at a point, from vector-Jacobian products only: a Hutchinson estimate of
||J||_F^2 (the Jacobian regulariser), its spectral radius by power iteration on J^T (the contraction check), and a
differentiable penalty on that radius."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def jacobian_frobenius_estimate(fz: Tensor, z: Tensor, weight: Tensor | float = 1.0) -> Tensor:
    """Hutchinson estimate of ||df/dz||_F^2 / numel per sample, times ``weight`` (a scalar or one per sample),
    averaged over the batch; differentiable.

    Uses one Rademacher probe eps: E ||eps^T J||^2 = ||J||_F^2. ``z`` must require grad and ``fz`` depend on it.
    """
    probe = torch.randint(0, 2, fz.shape, device=fz.device).to(fz.dtype).mul_(2).sub_(1)
    (vjp,) = torch.autograd.grad(fz, z, probe, create_graph=True)
    per_sample = vjp.pow(2).flatten(1).sum(dim=1) / vjp[0].numel()
    return (per_sample * weight).mean()


def per_sample_norm(v: Tensor) -> Tensor:
    """(B,) the Euclidean norm of each sample of v (B, ...)."""
    return torch.linalg.vector_norm(v.flatten(1), dim=1)


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """(B,) values (a mask or factors) shaped to broadcast over ``like`` (B, ...), in its dtype."""
    return values.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def _unit(v: Tensor) -> Tensor:
    return v / per_sample(per_sample_norm(v).clamp_min(torch.finfo(v.dtype).tiny), v)


def _power_iteration(fz: Tensor, z: Tensor, v: Tensor, iterations: int) -> tuple[Tensor, list[Tensor]]:
    """``iterations`` steps v <- J^T v / ||v|| through fz's graph (kept); the last unit vector and each step's
    log growth ||J^T v|| per sample."""
    log_growth = []
    for _ in range(iterations):
        v = _unit(v)
        (v,) = torch.autograd.grad(fz, z, v, retain_graph=True)
        log_growth.append(torch.log(per_sample_norm(v)))
    return _unit(v), log_growth


def spectral_radius(f: Callable[[Tensor], Tensor], z: Tensor, iterations: int = 40, seed: int = 0) -> Tensor:
    """(B,) estimate of the spectral radius of J = df/dz at z, per sample, by power iteration on J^T.

    J^T has J's spectrum and costs one vector-Jacobian product per iteration. The estimate is the geometric mean of
    the per-iteration growth ||J^T v|| / ||v|| over the second half of the iterations, which also settles when the
    dominant eigenvalues are a complex pair. Below 1, the step is locally a contraction at z.
    """
    if iterations < 2:
        raise ValueError(f"iterations must be at least 2, got {iterations}")
    generator = torch.Generator(device=z.device).manual_seed(seed)
    z = z.detach().requires_grad_()
    with torch.enable_grad():
        fz = f(z)
    v = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    _, log_growth = _power_iteration(fz, z, v, iterations)
    return torch.stack(log_growth[iterations // 2 :]).mean(dim=0).exp().detach()


def spectral_radius_penalty(
    fz: Tensor, z: Tensor, target: float, iterations: int, weight: Tensor | float = 1.0
) -> tuple[Tensor, Tensor]:
    """Differentiable penalty mean_b w_b relu(rho_b - target)^2 on each sample's spectral radius at z, and rho (B,);
    ``weight`` w is a scalar or one per sample.

    rho_b = ||J^T v_b|| for the unit vector v_b that ``iterations`` steps of power iteration (without a graph) leave;
    only that last product is differentiated, so the cost is ``iterations`` vector-Jacobian products plus one with
    create_graph. ``z`` must require grad and ``fz`` = f(z) depend on it.
    """
    v, _ = _power_iteration(fz, z, torch.randn_like(z), iterations)
    (product,) = torch.autograd.grad(fz, z, v, create_graph=True)
    rho = per_sample_norm(product)
    return (torch.relu(rho - target).pow(2) * weight).mean(), rho.detach()
