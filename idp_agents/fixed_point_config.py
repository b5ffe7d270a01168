"""The settings of a fixed-point layer (`FixedPointConfig`, checked when built) and what one call reports
(`FixedPointInfo`); the layer itself is `idp_agents.implicit`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from idp_agents.solvers import SOLVERS, SolverInfo

MODES = ("unrolled", "implicit")
GRADIENTS = ("implicit", "phantom")
DIVERGENCE_POLICIES = ("raise", "warn")
FORWARD_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class FixedPointConfig:
    """How the fixed point is reached and differentiated. Why each default is what it is, with the measurements:
    docs/design.md, "Defaults, and why".

    Both solves stop once every sample's relative residual is at most their tolerance, or their budget is spent; a
    solve that ends above its tolerance is counted in its ``SolverInfo.converged`` and warned about
    (``NonConvergenceWarning``, once per process). ``None``: run the whole budget, no host reads. A batched solve
    runs until its slowest sample converges, so ``k_fwd`` bounds the whole batch's work; the samples still above
    ``tol_fwd`` after it (the stragglers) get up to ``k_fwd_stragglers`` iterations more, solved on their own by
    ``solver_stragglers`` (when the caller can restrict the step to them, as planners do; 0: none). The solve's info
    then covers both; the regularisers' "unconverged" weights mark the samples that missed ``tol_fwd`` within
    ``k_fwd``.

    ``phantom_damping`` is the damping lambda of the phantom gradient's ``phantom_steps`` steps
    z <- z + lambda (f(z) - z) (Geng et al., 2021). The Jacobian regulariser (Bai et al., 2021) weighs each sample
    by ``jac_reg_weight``, or by ``jac_reg_unconverged`` (when set) if its forward solve missed ``tol_fwd``. The
    spectral penalty ``spectral_reg_weight`` * relu(rho - ``spectral_target``)^2 acts on each sample's spectral
    radius rho of J at z* (``spectral_iterations`` steps of power iteration), ``spectral_reg_unconverged`` its
    weight on the unconverged samples. Both act on the training steps whose index (the ``step`` a solve is given) is
    a multiple of ``jac_reg_every``. ``drop_unconverged`` keeps the samples whose forward solve missed ``tol_fwd``
    out of the implicit (or phantom) gradient: they have no fixed point to differentiate at; their loss still trains
    what acts after the solve, and the regularisers still act on them. ``gradient_gain_cap`` c scales each sample's
    implicit gradient w down to ||w|| <= c ||g||. ``forward_dtype`` ("bfloat16" or "float16") runs the implicit
    forward solve's steps under autocast to that dtype (meant for CUDA), casting each step's output back to the
    state's dtype; the final step with autograd and the backward stay in full precision. ``anderson_memory`` and
    ``anderson_mixing`` are Anderson's memory m and mixing beta, in every solve that uses it.
    """

    mode: str = "implicit"
    k_fwd: int = 30
    k_fwd_stragglers: int = 200
    solver_fwd: str = "anderson"
    solver_stragglers: str = "forward"
    tol_fwd: float | None = 1e-4
    k_bwd: int = 50
    solver_bwd: str = "anderson"
    tol_bwd: float | None = 1e-4
    gradient: str = "implicit"
    phantom_steps: int = 1
    phantom_damping: float = 0.5
    jac_reg_weight: float = 0.0
    jac_reg_unconverged: float | None = None
    jac_reg_every: int = 1
    spectral_reg_weight: float = 0.0
    spectral_reg_unconverged: float | None = None
    spectral_target: float = 0.9
    spectral_iterations: int = 8
    drop_unconverged: bool = True
    gradient_gain_cap: float | None = None
    on_divergence: str = "raise"
    forward_dtype: str | None = None
    anderson_memory: int = 5
    anderson_mixing: float = 1.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting."""
        choices = {
            "mode": (self.mode, MODES),
            "solver_fwd": (self.solver_fwd, tuple(SOLVERS)),
            "solver_stragglers": (self.solver_stragglers, tuple(SOLVERS)),
            "solver_bwd": (self.solver_bwd, tuple(SOLVERS)),
            "gradient": (self.gradient, GRADIENTS),
            "on_divergence": (self.on_divergence, DIVERGENCE_POLICIES),
        }
        for name, (value, valid) in choices.items():
            if value not in valid:
                raise ValueError(f"FixedPointConfig.{name}={value!r} is not one of {', '.join(valid)}")
        if not 0 < self.anderson_mixing <= 1:
            raise ValueError(f"FixedPointConfig.anderson_mixing must lie in (0, 1], got {self.anderson_mixing}")
        for name in ("k_fwd", "k_bwd", "phantom_steps", "jac_reg_every", "spectral_iterations", "anderson_memory"):
            if getattr(self, name) < 1:
                raise ValueError(f"FixedPointConfig.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("tol_fwd", "tol_bwd"):
            tol = getattr(self, name)
            if tol is not None and tol < 0:
                raise ValueError(f"FixedPointConfig.{name} must be non-negative or None, got {tol}")
        if self.forward_dtype is not None and self.forward_dtype not in FORWARD_DTYPES:
            raise ValueError(
                f"FixedPointConfig.forward_dtype={self.forward_dtype!r} is not None or one of "
                f"{', '.join(FORWARD_DTYPES)}"
            )
        if self.k_fwd_stragglers < 0:
            raise ValueError(f"FixedPointConfig.k_fwd_stragglers must be non-negative, got {self.k_fwd_stragglers}")
        for name in ("jac_reg_weight", "jac_reg_unconverged", "spectral_reg_weight", "spectral_reg_unconverged"):
            weight = getattr(self, name)
            if weight is not None and weight < 0:
                raise ValueError(f"FixedPointConfig.{name} must be non-negative, got {weight}")
        if not self.spectral_target > 0:
            raise ValueError(f"FixedPointConfig.spectral_target must be positive, got {self.spectral_target}")
        if self.gradient_gain_cap is not None and not self.gradient_gain_cap >= 1:
            raise ValueError(
                f"FixedPointConfig.gradient_gain_cap must be at least 1 or None, got {self.gradient_gain_cap}"
            )
        if not 0 < self.phantom_damping <= 1:
            raise ValueError(f"FixedPointConfig.phantom_damping must lie in (0, 1], got {self.phantom_damping}")


@dataclass
class FixedPointInfo:
    """Diagnostics of one fixed-point layer call; ``backward`` fills in once ``loss.backward()`` ran."""

    forward: SolverInfo | None
    jac_loss: Tensor | None  # the Jacobian regularisers' weighted loss (Frobenius and spectral), to add to the loss
    backward: list[SolverInfo] = field(default_factory=list)
    spectral_estimate: Tensor | None = None  # (B,) the spectral penalty's rho at z*, when it ran
    over_cap: Tensor | None = None  # (B,) above tol_fwd after k_fwd iterations, before the stragglers' continuation
