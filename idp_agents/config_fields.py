"""How a configuration's fields are declared and named on the command line: `setting` (a field with its help and
metadata, listed in `idp_agents.run_config`), the option strings and the flag that names a field in messages, and
the value types a field's annotation allows."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import field


def optional_float(text: str) -> float | None:
    """A float flag that also takes 'none'."""
    return None if text.lower() == "none" else float(text)


def value_type(annotation) -> type:
    """int for ``int | None``, and so on."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if isinstance(annotation, types.UnionType) else annotation


def of_type(value, expected: type) -> bool:
    """Whether ``value`` is a ``expected`` (an int is a float; a bool is neither an int nor a float)."""
    if expected is bool or isinstance(value, bool):
        return expected is bool and isinstance(value, bool)
    return isinstance(value, (int, float)) if expected is float else isinstance(value, expected)


def setting(default, help: str = "", **metadata):
    """A RunConfig field: its default, its help line and the metadata listed in the module docstring."""
    return field(default=default, metadata={"help": help, **metadata})


def flag_of(f: dataclasses.Field) -> str:
    """The option string that names a field in messages: its first flag."""
    return option_strings(f)[0]


def option_strings(f: dataclasses.Field) -> tuple[str, ...]:
    if f.metadata.get("flags"):
        return f.metadata["flags"]
    name = f.name.replace("_", "-")
    if f.type in ("bool", bool) and f.default:
        return (f"--no-{name}",)
    return (f"--{name}",)
