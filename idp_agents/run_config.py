"""The configuration of one training run: one typed field per setting. The command line (flags, types, choices,
help), the checks on values, the planner's keyword arguments, what a resumed run must share with its checkpoint
and the config file a sweep writes are all derived from the fields and their metadata, so adding a setting is
adding a field.

A field's metadata (see `setting`): ``help``; ``flags`` when its option strings are not ``--field-name``;
``choices``; ``parse`` for a flag's text; ``minimum`` and ``positive`` bounds; ``fixed_point``, the
`FixedPointConfig` setting it sets, and ``planner_default`` when None means the planner's own default; ``step``
for a Bellman-step hyperparameter (passed only to planners that take it), with ``unbounded_when_zero`` for a bound
that 0 switches off.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path

from idp_agents.config_fields import flag_of, of_type, optional_float, setting, value_type
from idp_agents.epochs import LR_SCHEDULES
from idp_agents.fixed_point_config import DIVERGENCE_POLICIES, FORWARD_DTYPES, GRADIENTS, FixedPointConfig
from idp_agents.planners import FIXED_POINT_KEYS, PLANNERS, step_hyperparameters
from idp_agents.planners.convgppn import CELLS
from idp_agents.planners.fused import COMPILE_CHOICES
from idp_agents.planners.symvin import GROUP_ORDERS
from idp_agents.solvers import SOLVERS


def planner_setting(key: str, help: str, **metadata):
    """A RunConfig field for the fixed-point setting ``key`` whose None means the planner's own default."""
    return setting(None, help, fixed_point=key, planner_default=True, **metadata)


def planner_note(key: str) -> str:
    """'default D; P V, ...' for a fixed-point setting: its default and the planners whose own defaults differ."""
    own = [f"{name} {spec.defaults[key]}" for name, spec in PLANNERS.items() if key in spec.defaults]
    return "; ".join([f"default {getattr(FixedPointConfig, key)}", *own])


SOLVER_NAMES = tuple(sorted(SOLVERS))


@dataclass
class RunConfig:
    """One training run; every field is a command-line flag, checked when the config is built."""

    env: str = setting("IDP/GridMaze-15-v0", "environment id, with or without the IDP/ prefix and -v0")
    size: int | None = setting(None, "map size, for ids that take one (IDP/GridMaze-v0)", minimum=1)
    planner: str = setting("id-vin", "the planner", choices=tuple(sorted(PLANNERS)))
    # fixed-point settings
    k_fwd: int | None = planner_setting(
        "k_fwd",
        f"unrolled layers, or the implicit forward solver's iteration cap ({planner_note('k_fwd')})",
        flags=("--k-fwd", "--k"),
        minimum=1,
    )
    k_fwd_stragglers: int | None = planner_setting(
        "k_fwd_stragglers",
        "iterations more for the samples still above --tol-fwd after --k, solved apart from their batch "
        f"({planner_note('k_fwd_stragglers')})",
        minimum=0,
    )
    k_bwd: int | None = planner_setting(
        "k_bwd",
        f"the implicit backward solver's iteration cap ({planner_note('k_bwd')})",
        minimum=1,
    )
    solver_fwd: str = setting(
        FixedPointConfig.solver_fwd, "the implicit forward solver", choices=SOLVER_NAMES, fixed_point="solver_fwd"
    )
    solver_stragglers: str = setting(
        FixedPointConfig.solver_stragglers,
        "the solver that continues the samples still above --tol-fwd at the cap: forward (the plain iteration, "
        "which converges wherever the fixed point attracts) | anderson | broyden",
        choices=SOLVER_NAMES,
        fixed_point="solver_stragglers",
    )
    solver_bwd: str = setting(
        FixedPointConfig.solver_bwd, "the implicit backward solver", choices=SOLVER_NAMES, fixed_point="solver_bwd"
    )
    tol_fwd: float | None = setting(
        FixedPointConfig.tol_fwd,
        "stop the forward solve at this relative residual (none: always run --k iterations)",
        parse=optional_float,
        minimum=0,
        fixed_point="tol_fwd",
    )
    tol_bwd: float | None = setting(
        FixedPointConfig.tol_bwd,
        "stop the backward solve at this relative residual (none: always run --k-bwd iterations)",
        parse=optional_float,
        minimum=0,
        fixed_point="tol_bwd",
    )
    gradient: str = setting(
        FixedPointConfig.gradient,
        "implicit (the IFT backward solve) | phantom (a few damped steps from the fixed point)",
        choices=GRADIENTS,
        fixed_point="gradient",
    )
    phantom_steps: int | None = planner_setting(
        "phantom_steps",
        f"--gradient phantom: damped steps differentiated ({planner_note('phantom_steps')})",
        minimum=1,
    )
    phantom_damping: float | None = planner_setting(
        "phantom_damping",
        f"--gradient phantom: each step's damping lambda ({planner_note('phantom_damping')})",
        positive=True,
    )
    jac_reg: float | None = planner_setting(
        "jac_reg_weight",
        "weight of the Jacobian regulariser on every sample (default: the planner's, 0 for all)",
        minimum=0,
    )
    jac_reg_unconverged: float | None = planner_setting(
        "jac_reg_unconverged",
        "weight of the Jacobian regulariser on the samples whose forward solve missed --tol-fwd instead "
        f"(default: --jac-reg; id-convgppn {PLANNERS['id-convgppn'].defaults['jac_reg_unconverged']})",
        minimum=0,
    )
    jac_reg_every: int | None = planner_setting(
        "jac_reg_every",
        f"apply the regularisers every this many training steps ({planner_note('jac_reg_every')})",
        minimum=1,
    )
    spectral_reg: float | None = planner_setting(
        "spectral_reg_weight",
        "weight of the penalty relu(rho - --spectral-target)^2 on each sample's spectral radius rho at its fixed "
        f"point (default: the planner's; id-convgppn {PLANNERS['id-convgppn'].defaults.get('spectral_reg_weight', 0)})",
        minimum=0,
    )
    spectral_reg_unconverged: float | None = planner_setting(
        "spectral_reg_unconverged",
        "weight of that penalty on the samples whose forward solve missed --tol-fwd instead (default: --spectral-reg)",
        minimum=0,
    )
    spectral_target: float | None = planner_setting(
        "spectral_target",
        f"spectral radius above which --spectral-reg penalises ({planner_note('spectral_target')})",
    )
    spectral_iterations: int | None = planner_setting(
        "spectral_iterations",
        f"power-iteration steps of each spectral-radius estimate ({planner_note('spectral_iterations')})",
        minimum=1,
    )
    drop_unconverged: bool = setting(
        FixedPointConfig.drop_unconverged,
        "let the samples whose forward solve missed --tol-fwd into the implicit gradient (default: left out)",
        flags=("--keep-unconverged",),
        fixed_point="drop_unconverged",
    )
    gradient_gain_cap: float | None = planner_setting(
        "gradient_gain_cap",
        "scale each sample's implicit gradient w down to ||w|| <= cap ||g|| (default: the planner's, none)",
        positive=True,
    )
    on_divergence: str = setting(
        FixedPointConfig.on_divergence,
        "when a fixed-point solve diverges: raise (stop the run) | warn (report it and go on)",
        choices=DIVERGENCE_POLICIES,
        fixed_point="on_divergence",
    )
    forward_dtype: str | None = planner_setting(
        "forward_dtype",
        "run the implicit forward solve's steps in this dtype (meant for CUDA; default: the state's)",
        choices=tuple(FORWARD_DTYPES),
    )
    anderson_memory: int | None = planner_setting(
        "anderson_memory",
        f"Anderson's memory: past iterates each step combines ({planner_note('anderson_memory')})",
        minimum=1,
    )
    anderson_mixing: float | None = planner_setting(
        "anderson_mixing",
        f"Anderson's mixing beta in (0, 1] ({planner_note('anderson_mixing')})",
        positive=True,
    )
    # the Bellman step
    l_h: int | None = setting(None, "VIN/SymVIN hidden channels (default 150 for VIN)", minimum=1, step=True)
    l_q: int | None = setting(None, "VIN/SymVIN Q channels (default 100 for VIN)", minimum=1, step=True)
    hidden: int | None = setting(None, "ConvGPPN hidden channels (default 40)", minimum=1, step=True)
    kernel: int | None = setting(
        None, "Bellman step kernel size (default: VIN/SymVIN 5, ConvGPPN 3)", minimum=1, step=True
    )
    group: str | None = setting(None, "SymVIN symmetry group", choices=tuple(GROUP_ORDERS), step=True)
    discount: float | None = setting(
        None,
        "VIN/SymVIN: bound on each value filter's L1 norm, which makes the step a contraction (default 0.95; "
        "0: unbounded)",
        minimum=0,
        step=True,
        unbounded_when_zero=True,
    )
    contraction: float | None = setting(
        None,
        "ConvGPPN: bound the hidden-gate filters so the step contracts by at most this factor (default: none; 0: none)",
        minimum=0,
        step=True,
        unbounded_when_zero=True,
    )
    cell: str | None = setting(
        None,
        "ConvGPPN: the recurrent cell, lstm (GPPN's own; state h and c) or gru (state h) (default lstm)",
        choices=CELLS,
        step=True,
    )
    forget_bound: float | None = setting(
        None,
        "ConvGPPN LSTM: scale the forget gate into (0, this bound), so the cell state contracts (default 0.9; "
        "1: unbounded)",
        positive=True,
        step=True,
    )
    fused: bool = setting(
        True, "run every step on its plain (reference) path instead of its fused kernels", flags=("--plain-steps",)
    )
    compile: str = setting(
        "auto",
        "torch.compile the fused kernels: auto (on CUDA only; no faster on a 2-core CPU) | 1 (everywhere) | 0 (never)",
        choices=COMPILE_CHOICES,
    )
    # training
    epochs: int = setting(6, "training epochs (end to end, with a mapper)", minimum=0)
    mapper_epochs: int = setting(
        2, "envs observed through a mapper: epochs pre-training the mapper alone (BCE on the true map)", minimum=0
    )
    planner_epochs: int = setting(
        2, "envs observed through a mapper: epochs pre-training the planner alone on true maps", minimum=0
    )
    map_loss_weight: float = setting(
        1.0, "weight of the mapper's BCE beside the imitation loss in end-to-end epochs", minimum=0
    )
    batch_size: int = setting(32, "training maps per step", minimum=1)
    lr: float = setting(1e-3, "RMSprop learning rate", positive=True)
    lr_schedule: str = setting(
        "late-cosine",
        "late-cosine (default): lr for the first half of the epochs, then a cosine decay over the rest; "
        "constant (the published protocol); cosine: each epoch's rate lr (1 + cos(pi e / epochs)) / 2, "
        "e = 0, 1, ...",
        choices=LR_SCHEDULES,
    )
    clip: float | None = setting(40.0, "gradient-norm clip (<= 0: none)")
    # data
    train: int = setting(2000, "training maps (generated when --data is not given)", minimum=1)
    val: int = setting(200, "validation maps", minimum=1)
    test: int = setting(500, "test maps", minimum=1)
    data: str | None = setting(None, "a dataset file from python -m idp_envs.datasets (overrides the sizes)")
    cache_dir: str = setting("data", "where generated datasets are cached")
    # where and how
    device: str = setting("auto", "auto (CUDA when present) | cpu | cuda | cuda:N")
    threads: int | None = setting(None, "CPU threads for torch (default: torch's choice, one per core)", minimum=1)
    seed: int = setting(0, "seed of the dataset, the initialisation and the batches")
    out: str = setting("runs/latest", "run directory: checkpoints, metrics.csv, test_report.json")
    resume: bool = setting(False, "continue from OUT/last.pt")
    eval_batch_size: int = setting(128, "maps per evaluation batch", minimum=1)
    progress: bool = setting(True, "no progress bars")
    gif: bool = setting(True, "do not render a test episode to OUT/rollout.gif")
    memory_budget_gb: float | None = setting(
        None,
        "CUDA: cap the allocator at this many GB; CPU: refuse the run when the first training batch needs more",
        positive=True,
    )

    def __post_init__(self) -> None:
        if self.clip is not None and self.clip <= 0:
            self.clip = None
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the flag of the first invalid setting: before any dataset is made."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, meta, flag = getattr(self, f.name), f.metadata, flag_of(f)
            if value is None:
                continue
            expected = value_type(hints[f.name])
            if not of_type(value, expected):  # a config file's or a sweep's value, say "1e-3" or 2.5 for a count
                raise ValueError(f"{flag} must be {expected.__name__}, got {value!r}")
            if meta.get("choices") and value not in meta["choices"]:
                raise ValueError(f"{flag} {value!r}: choose one of {', '.join(map(str, meta['choices']))}")
            if isinstance(value, float) and not math.isfinite(value):  # NaN passes every comparison, trains to NaN
                raise ValueError(f"{flag} must be a finite number, got {value}")
            if meta.get("minimum") is not None and value < meta["minimum"]:
                raise ValueError(f"{flag} must be at least {meta['minimum']}, got {value}")
            if meta.get("positive") and value <= 0:
                raise ValueError(f"{flag} must be positive, got {value}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"--seed must be between 0 and 2**32 - 1, got {self.seed}")
        kwargs = self.planner_kwargs()
        fixed_point = {**PLANNERS[self.planner].defaults, **kwargs}
        try:
            FixedPointConfig(**{k: v for k, v in fixed_point.items() if k in FIXED_POINT_KEYS})
        except ValueError as exc:  # name the flag, not the internal field
            raise ValueError(
                re.sub(r"FixedPointConfig\.(\w+)", lambda m: FLAG_OF_FIXED_POINT[m[1]], str(exc))
            ) from None

    def planner_kwargs(self) -> dict:
        """Fixed-point settings and the step hyperparameters that were set; the rest keep the planner's defaults.

        A bound (``discount``, ``contraction``) of 0 asks for the unbounded step."""
        accepted = step_hyperparameters(PLANNERS[self.planner].step)
        kwargs, rejected = {}, []
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta.get("fixed_point") and (value is not None or not meta.get("planner_default")):
                kwargs[meta["fixed_point"]] = value
            elif meta.get("step") and value is not None:
                if f.name not in accepted:
                    rejected.append(f.name)
                kwargs[f.name] = None if meta.get("unbounded_when_zero") and value == 0 else value
        if rejected:
            raise ValueError(f"{self.planner} does not take {rejected}; its hyperparameters are {list(accepted)}")
        return kwargs

    def dataset_path(self) -> Path:
        if self.data:
            return Path(self.data)
        name = self.env.replace("/", "_") + (f"-size{self.size}" if self.size else "")
        return Path(self.cache_dir) / f"{name}-{self.train}-{self.val}-{self.test}-seed{self.seed}.npz"


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
STEP_FIELDS = tuple(name for name, f in FIELDS.items() if f.metadata.get("step"))
# a FixedPointConfig setting -> the RunConfig field that sets it
FIELD_OF_FIXED_POINT = {f.metadata["fixed_point"]: f.name for f in FIELDS.values() if f.metadata.get("fixed_point")}


FLAG_OF_FIXED_POINT = {key: flag_of(FIELDS[name]) for key, name in FIELD_OF_FIXED_POINT.items()}
