"""A sweep config (YAML): its tasks, planners, K and seeds, checked key by key and value by value when read, and the
imitation run (`RunConfig`) of each point of its grid."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from idp_agents.planners import PLANNERS, step_hyperparameters
from idp_agents.run_config import STEP_FIELDS, RunConfig

RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)}
SWEEP_KEYS = {"name", "description", "tasks", "planners", "k", "seeds", "common", "planner_settings", "generalisation"}
SET_BY_SWEEP = {"planner", "k_fwd", "seed", "out", "resume"}


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a task of the config, a planner, K and a seed, with every RunConfig setting it takes."""

    task: str
    planner: str
    k: int | None  # None: the planner's default
    seed: int
    settings: tuple = ()

    @property
    def key(self) -> str:
        k = "default" if self.k is None else self.k
        return f"{self.task}/{self.planner}/k{k}/seed{self.seed}"

    @property
    def mode(self) -> str:
        return PLANNERS[self.planner].mode


@dataclass
class Sweep:
    """A config file resolved for one form (full or ``--small``)."""

    name: str
    path: Path
    small: bool
    out: Path
    tasks: list[dict]
    planners: list[str]
    k: list[int]
    seeds: list[int]
    common: dict = field(default_factory=dict)
    planner_settings: dict = field(default_factory=dict)
    generalisation: dict | None = None
    description: str = ""

    def runs(self) -> list[RunSpec]:
        """Every run of the grid, task-major, with the settings the planner accepts."""
        return [
            RunSpec(t["name"], p, k, s, tuple(sorted(self.settings(t, p).items())))
            for t in self.tasks
            for p in self.planners
            for k in self.k
            for s in self.seeds
        ]

    def settings(self, task: dict, planner: str) -> dict:
        """RunConfig fields of a run: common, then the task's, then the planner's; step hyperparameters the planner
        does not take (``hidden`` for VIN, ``l_h`` for ConvGPPN) are dropped so one ``common`` serves all six."""
        merged = {**self.common, **{k: v for k, v in task.items() if k != "name"}}
        merged.update(self.planner_settings.get(planner, {}))
        accepted = step_hyperparameters(PLANNERS[planner].step)
        return {k: v for k, v in merged.items() if k not in STEP_FIELDS or k in accepted}

    def run_dir(self, spec: RunSpec) -> Path:
        return self.out / spec.key

    def report_dir(self) -> Path:
        return self.out / "report"


def _check_keys(where: str, given: dict, valid: set) -> None:
    unknown = sorted(set(given) - valid)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid: {sorted(valid)}")


def _check_mappings(where: str, raw: dict) -> None:
    for key in ("common", "planner_settings", "generalisation"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise ValueError(f"{where}: {key} must be a mapping, got {raw[key]!r}")


def _small_description(raw: dict, small_part: dict) -> str:
    """What a config's small form runs, for a config whose ``small:`` section has no description of its own."""
    tasks = [t for t in small_part.get("tasks", raw.get("tasks", [])) if isinstance(t, dict)]
    runs = ", ".join(
        f"{t.get('name')} ({t.get('env')}" + (f" size {t['size']})" if "size" in t else ")") for t in tasks
    )
    full = str(raw.get("description", "")).strip()
    return f"The small form (--small) of this config, sized for a CPU in minutes: {runs}." + (
        f" The full config: {full}" if full else ""
    )


def load_sweep(path: str | os.PathLike, small: bool = False, out: str | None = None) -> Sweep:
    """Read a sweep config; ``small`` overlays its ``small:`` section (``common`` merged key by key, the rest
    replaced). Every key is checked here, so a typo fails before the first run starts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sweep config at {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{path} is not valid YAML{line}: {problem}") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a text file, so not a sweep config") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a sweep config is a YAML mapping")
    small_part = raw.pop("small", None)
    _check_keys(str(path), raw, SWEEP_KEYS)
    _check_mappings(str(path), raw)
    if small:
        if not isinstance(small_part, dict):
            raise ValueError(f"{path} has no small: section for --small")
        _check_keys(f"{path} small:", small_part, SWEEP_KEYS - {"name"})
        _check_mappings(f"{path} small:", small_part)
        common = {**(raw.get("common") or {}), **(small_part.get("common") or {})}
        if "description" not in small_part:  # the full config's description would describe other runs
            small_part = {**small_part, "description": _small_description(raw, small_part)}
        raw = {**raw, **small_part, "common": common}
    for key in ("tasks", "planners", "k", "seeds"):
        if not raw.get(key) or not isinstance(raw[key], list):
            raise ValueError(f"{path}: {key} must be a non-empty list, got {raw.get(key)!r}")
    name = raw.get("name", path.stem)
    tasks = raw["tasks"]
    if not all(isinstance(t, dict) for t in tasks):
        raise ValueError(f"{path}: every task is a mapping with a name and an env, got {tasks!r}")
    names = [t.get("name") for t in tasks]
    if None in names or len(set(names)) != len(names):
        raise ValueError(f"{path}: every task needs a unique name, got {names}")
    for task in tasks:
        _check_keys(f"{path} task {task['name']}", task, (RUN_FIELDS - SET_BY_SWEEP) | {"name"})
        if "env" not in task:
            raise ValueError(f"{path} task {task['name']}: no env")
    _check_keys(f"{path} common", raw.get("common", {}), RUN_FIELDS - SET_BY_SWEEP)
    unknown = sorted(set(raw["planners"]) - set(PLANNERS))
    if unknown:
        raise ValueError(f"{path}: unknown planners {unknown}; valid: {sorted(PLANNERS)}")
    for planner, settings in raw.get("planner_settings", {}).items():
        _check_keys(f"{path} planner_settings {planner}", settings, RUN_FIELDS - SET_BY_SWEEP)
    default_out = Path("runs") / "experiments" / (name + ("-small" if small else ""))
    sweep = Sweep(
        name=name,
        path=path,
        small=small,
        out=Path(out) if out else default_out,
        tasks=tasks,
        planners=list(raw["planners"]),
        k=[int(k) for k in raw["k"]],
        seeds=[int(s) for s in raw["seeds"]],
        common=dict(raw.get("common", {})),
        planner_settings=dict(raw.get("planner_settings", {})),
        generalisation=raw.get("generalisation"),
        description=raw.get("description", ""),
    )
    if sweep.generalisation is not None:
        _check_keys(f"{path} generalisation", sweep.generalisation, {"task", "sizes", "maps", "seed"})
        if sweep.generalisation.get("task") not in names:
            raise ValueError(f"{path} generalisation: task must be one of {names}")
    for spec in sweep.runs():  # every value checked too, before the first run starts
        try:
            run_config(sweep, spec)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path} run {spec.key}: {exc}") from None
    return sweep


def run_config(sweep: Sweep, spec: RunSpec, overrides: dict | None = None) -> RunConfig:
    """The imitation run of ``spec``; ``overrides`` (threads, device, cache_dir from the command line) win."""
    settings = {"progress": False, "gif": False, **dict(spec.settings), **(overrides or {})}  # no bars or GIFs
    return RunConfig(**settings, planner=spec.planner, k_fwd=spec.k, seed=spec.seed, out=str(sweep.run_dir(spec)))
