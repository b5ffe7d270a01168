"""A RunConfig's command line and config file, and what a resumed run must share with its checkpoint: all derived
from the fields of `idp_agents.run_config.RunConfig` (or of a dataclass extending it)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path

from idp_agents.config_fields import option_strings, value_type
from idp_agents.run_config import RunConfig
from idp_envs.files import atomic_write

# settings a resumed run may change: where and how it runs, how long, what it prints; every other field must match
# its checkpoint (the planner's settings compared as the planners they build, since a default may change between
# versions)
CHANGEABLE_ON_RESUME = (
    "epochs",
    "cache_dir",
    "device",
    "threads",
    "out",
    "resume",
    "eval_batch_size",
    "progress",
    "gif",
    "memory_budget_gb",
    "fused",
    "compile",
)
# what a run had for a setting that its checkpoint predates, where that is not today's default
BEFORE_THE_FLAG = {"lr_schedule": "constant", "solver_stragglers": "anderson"}


def build_parser(
    prog: str = "python -m idp_agents.imitate",
    description: str | None = None,
    exit_on_error: bool = True,
    cls: type[RunConfig] = RunConfig,
) -> argparse.ArgumentParser:
    """The command line of `RunConfig` (or of ``cls``, a dataclass extending it): one flag per field, and
    ``--config`` to start from a config file. With ``exit_on_error=False`` a bad value raises
    argparse.ArgumentError (naming its flag) instead of exiting."""
    p = argparse.ArgumentParser(prog=prog, description=description, exit_on_error=exit_on_error)
    p.add_argument(
        "--config",
        help="a run's config file (JSON, as a sweep writes it): its settings replace the defaults, and flags given "
        "beside it override them",
    )
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f.name
        kwargs = {"dest": name, "default": f.default, "help": f.metadata["help"]}
        if hints[name] is bool:
            kwargs["action"] = "store_false" if f.default else "store_true"
        else:
            kwargs["type"] = f.metadata.get("parse") or value_type(hints[name])
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        p.add_argument(*option_strings(f), **kwargs)
    return p


def parse_config(
    argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None, cls: type[RunConfig] = RunConfig
) -> RunConfig:
    """The config a command line asks for (``--config FILE`` first, then the flags); a bad value raises
    ValueError naming its flag."""
    parser = parser or build_parser(cls=cls)
    given, _ = parser.parse_known_args(argv)
    if given.config:
        parser.set_defaults(**read_config_file(given.config, cls))
    values = vars(parser.parse_args(argv))
    values.pop("config")
    return cls(**values)


def write_config_file(config: RunConfig, path: Path) -> None:
    """``config`` as JSON, written atomically: ``python -m idp_agents.imitate --config PATH`` runs it."""
    with atomic_write(Path(path)) as f:
        f.write((json.dumps(dataclasses.asdict(config), indent=2) + "\n").encode())


def read_config_file(path: str | Path, cls: type[RunConfig] = RunConfig) -> dict:
    """The settings of a config file, checked to be fields of ``cls``."""
    try:
        values = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"--config {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--config {path} is not a JSON config file ({exc})") from None
    if not isinstance(values, dict):
        raise ValueError(f"--config {path} holds {type(values).__name__}, not a mapping of settings")
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"--config {path}: {unknown} are not settings of a run")
    return values


def compared_on_resume(cls: type[RunConfig] = RunConfig) -> tuple[str, ...]:
    """The fields a resumed run must share with its checkpoint as values: all but `CHANGEABLE_ON_RESUME` and the
    planner's settings that default to the planner's own or are the step's (compared as the planners they build)."""
    return tuple(
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in CHANGEABLE_ON_RESUME and not f.metadata.get("planner_default") and not f.metadata.get("step")
    )


def resume_differences(saved_run: dict, config: RunConfig) -> dict[str, tuple]:
    """Field -> (the checkpoint's value, today's) for every compared field that differs; a field newer than the
    checkpoint compares as what that run trained with (`BEFORE_THE_FLAG`, else today's default)."""
    changed = {}
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for name in compared_on_resume(type(config)):
        before = saved_run.get(name, BEFORE_THE_FLAG.get(name, defaults[name]))
        if before != getattr(config, name):
            changed[name] = (before, getattr(config, name))
    return changed
