"""Planners by name: VIN, ConvGPPN and SymVIN, each unrolled ("vin") or implicit ("id-vin")."""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

from idp_agents.fixed_point_config import FixedPointConfig
from idp_agents.planners.base import BellmanStep, Planner, PlannerOutput, PlannerTrace
from idp_agents.planners.convgppn import ConvGPPNStep
from idp_agents.planners.symvin import SteerableConv, SymVINStep
from idp_agents.planners.vin import VINStep


@dataclass(frozen=True)
class PlannerSpec:
    """A registered planner: its Bellman step, how its fixed point is reached and differentiated, and the
    fixed-point and step settings it defaults to where they differ from ``FixedPointConfig``'s and the step's."""

    step: type[BellmanStep]
    mode: str
    defaults: dict = field(default_factory=dict)


# ConvGPPN's unconstrained step stops contracting while it learns (see docs/design.md). Its implicit form carries a
# penalty on its spectral radius at the fixed point, 20 * relu(rho - 0.9)^2 per sample: without it, on the 18x18
# torus, rho reached 1.3 within two epochs and 58% of solves missed the tolerance; with it, at most 1.6% per epoch.
# The Jacobian penalty (Bai et al., 2021) weighs 5 on the samples whose forward solve missed the tolerance and 0
# elsewhere. A uniform weight (0.1, 0.3, 1.0) slowed learning
# on every map to protect the 1-3% that needed it; bounding the hidden-gate filters (``contraction``) learned slower
# still. Its forward cap covers the light cone: a 3x3 step moves information one cell per iteration and the
# longest 15x15 maze paths reach 62-77 steps; at a cap of 80, 1-3% of solves stopped above tolerance for lack of
# iterations. The tolerance stops each solve early, so the cap costs only on the maps that need it. All of this was
# measured with the GRU cell; with the LSTM (today's default cell) the same settings learn, but 2-3% of maze solves
# end above tolerance: maps where the learned step sits at spectral radius ~1 (benchmarks.unconverged_radius), which
# larger caps (400 / 200 learned less and collapsed once on the C-space; 400 / 50 halved the misses) do not fix
# (docs/results.md, "Larger solver caps for the LSTM"). Most of those maps are slow, not lost: on the seed-0 run's
# last weights, all 8 of 256 training maps above tolerance at 200 converged within 800 iterations more, solved apart
# from their batch (``k_fwd_stragglers``; 200 for the other planners), for 10% more forward time; trained with it,
# 0.1-0.3% of the last epoch's solves end above tolerance (docs/results.md, "Stragglers solved apart").
ID_CONVGPPN_DEFAULTS = {
    "jac_reg_weight": 0.0,
    "jac_reg_unconverged": 5.0,
    "spectral_reg_weight": 20.0,
    "k_fwd": 200,
    "k_fwd_stragglers": 800,
}

PLANNERS: dict[str, PlannerSpec] = {
    "vin": PlannerSpec(VINStep, "unrolled"),
    "id-vin": PlannerSpec(VINStep, "implicit"),
    "convgppn": PlannerSpec(ConvGPPNStep, "unrolled"),
    "id-convgppn": PlannerSpec(ConvGPPNStep, "implicit", ID_CONVGPPN_DEFAULTS),
    "symvin": PlannerSpec(SymVINStep, "unrolled"),
    "id-symvin": PlannerSpec(SymVINStep, "implicit"),
}

FIXED_POINT_KEYS = tuple(f.name for f in dataclasses.fields(FixedPointConfig) if f.name != "mode")


def step_hyperparameters(step: type[BellmanStep]) -> tuple[str, ...]:
    """The keyword hyperparameters a step class accepts, besides `topology`."""
    params = inspect.signature(step.__init__).parameters
    return tuple(p for p in params if p not in ("self", "topology"))


def make_planner(
    name: str, *, topology: str = "plane", fixed_point: FixedPointConfig | None = None, **hyper: Any
) -> Planner:
    """Build a registered planner; the "id-" prefix selects the implicit fixed point, otherwise it is unrolled.

    Fixed-point settings (k_fwd, k_bwd, solver_fwd, solver_bwd, tol_fwd, tol_bwd, gradient, jac_reg_weight, ...)
    may be passed flat and override `fixed_point`; every other keyword is a hyperparameter of the step. Settings
    not given take the planner's own defaults (``PLANNERS[name].defaults``), then FixedPointConfig's and the
    step's; a ``fixed_point`` config given whole replaces the planner's fixed-point defaults.
    """
    if name not in PLANNERS:
        raise ValueError(f"unknown planner {name!r}; valid names: {sorted(PLANNERS)}")
    spec = PLANNERS[name]
    fixed_point_given = fixed_point is not None
    hyper = {k: v for k, v in spec.defaults.items() if not (fixed_point_given and k in FIXED_POINT_KEYS)} | hyper
    fp_overrides = {k: hyper.pop(k) for k in FIXED_POINT_KEYS if k in hyper}
    if "mode" in hyper:
        raise ValueError(f"mode is set by the planner name ({name!r} is {spec.mode}); pick 'x' or 'id-x' instead")
    valid = step_hyperparameters(spec.step)
    unknown = sorted(set(hyper) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown hyperparameters {unknown} for {name!r}; step hyperparameters: {list(valid)}, "
            f"fixed-point settings: {list(FIXED_POINT_KEYS)}"
        )
    config = dataclasses.replace(fixed_point or FixedPointConfig(), mode=spec.mode, **fp_overrides)
    return Planner(spec.step(topology=topology, **hyper), config)


__all__ = [
    "PLANNERS",
    "BellmanStep",
    "ConvGPPNStep",
    "Planner",
    "PlannerOutput",
    "PlannerTrace",
    "PlannerSpec",
    "SteerableConv",
    "SymVINStep",
    "VINStep",
    "make_planner",
    "step_hyperparameters",
]
