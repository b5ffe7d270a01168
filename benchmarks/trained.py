"""What the benchmarks that replay a trained checkpoint share: the checkpoint with its training split, and the same
weights in a planner built with other fixed-point settings."""

from __future__ import annotations

import torch

from idp_agents.imitate import load_or_generate_dataset, split_data
from idp_agents.planners import Planner, make_planner, step_hyperparameters
from idp_agents.policy import PlannerPolicy, legacy_planner_kwargs
from idp_agents.run_config import RunConfig

# The run settings that name a dataset: its --data file, else the cache entry of env, size, split sizes and seed
DATASET_FIELDS = ("env", "size", "train", "val", "test", "seed", "data", "cache_dir")


def dataset_config(run: dict) -> RunConfig:
    """A checkpoint's run settings (``config["run"]``) reduced to those that name the dataset it was trained on."""
    return RunConfig(**{k: run[k] for k in DATASET_FIELDS if k in run})


def load_with_splits(path: str, names: tuple[str, ...]) -> tuple[PlannerPolicy, list[dict]]:
    """The checkpoint's policy and the named splits ("train", "val", "test") of the dataset it was trained on (on
    the CPU), the checkpoint and the dataset each read once."""
    trained = PlannerPolicy.load(path)
    splits, _ = load_or_generate_dataset(dataset_config(trained.config["run"]))
    return trained, [split_data(splits[name], None, torch.device("cpu")) for name in names]


def load_with_split(path: str, split: str = "train") -> tuple[PlannerPolicy, dict]:
    """The checkpoint's policy and one split of the dataset it was trained on."""
    trained, (data,) = load_with_splits(path, (split,))
    return trained, data


def rebuilt(trained: PlannerPolicy, **kwargs) -> Planner:
    """The trained weights in a planner of the same name, topology and step hyperparameters (its cell, widths: what
    the weights fit), made with ``kwargs``; fixed-point settings not in ``kwargs`` take today's defaults."""
    step = type(trained.planner.step)
    saved = legacy_planner_kwargs(trained.config, trained.planner.state_dict())
    kwargs = {k: v for k, v in saved.items() if k in step_hyperparameters(step)} | kwargs
    planner = make_planner(trained.config["planner"], topology=trained.planner.topology, **kwargs)
    planner.load_state_dict(trained.planner.state_dict())
    return planner
