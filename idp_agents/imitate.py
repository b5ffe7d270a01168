"""Train a planner by imitation of BFS-optimal actions, evaluate it closed-loop, and report on the test split.

    python -m idp_agents.imitate --env GridMaze-15 --planner id-vin

Every hyperparameter is a flag. The defaults are small enough to finish on a 2-core CPU in a few minutes; the
published protocol (GPPN's, which the implicit-planning paper follows) is
``--train 10000 --val 2000 --test 2000 --epochs 30`` with the defaults batch 32, RMSprop lr 1e-3, clip 40, K 30.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import functools
import json
import random
import sys
from dataclasses import asdict
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.distributed as dist

from idp_agents.checkpoints import load_checkpoint, save_checkpoint
from idp_agents.distributed import (
    barrier,
    data_parallel,
    main_process_first,
    rank_and_world,
    run_device,
    start_distributed,
)
from idp_agents.epochs import (
    EpochSettings,
    epoch_lr,
    epoch_phases,
    evaluate,
    first_batch_step,
    probe_spectral_radius,
    train_epoch,
)
from idp_agents.mappers import make_mapper, mapper_input_key
from idp_agents.planner_input import task_tensors
from idp_agents.planners import FIXED_POINT_KEYS, make_planner, step_hyperparameters
from idp_agents.policy import PlannerPolicy, legacy_planner_kwargs
from idp_agents.run_config import FIELD_OF_FIXED_POINT, RunConfig
from idp_agents.run_files import (
    check_free_space,
    fixed_point_line,
    prepare_out_dir,
    print_report,
    restore_rng,
    rng_state,
    tensorboard_writer,
    write_metrics_csv,
)
from idp_agents.run_flags import build_parser, parse_config, resume_differences
from idp_agents.step_cost import MemoryBudgetExceeded, apply_memory_budget
from idp_envs import resolve_env_id, size_kwargs, view_store
from idp_envs.datasets import DatasetError, ensure_dataset
from idp_envs.files import atomic_write
from idp_envs.tasks import TaskBatch
from rollouts.video import showcase_gif


def env_kwargs(config: RunConfig) -> dict:
    return size_kwargs(config.env, config.size)


def load_or_generate_dataset(config: RunConfig) -> tuple[dict, dict]:
    """The run's dataset: ``--data``, or the cache entry its sizes and seed name (made on first use,
    `idp_envs.datasets.ensure_dataset`), with the three splits training needs."""
    path = config.dataset_path()
    if config.data and not path.exists():
        raise FileNotFoundError(f"--data {path} does not exist")
    counts = {"train": config.train, "val": config.val, "test": config.test}
    splits, meta = ensure_dataset(path, config.env, counts, config.seed, env_kwargs(config), progress=config.progress)
    missing = {"train", "val", "test"} - set(splits)
    if missing:
        raise ValueError(f"dataset {path} lacks the splits {sorted(missing)}")
    empty = [name for name in ("train", "val", "test") if len(splits[name]) == 0]
    if empty:
        raise DatasetError(f"dataset {path} has no maps in its {', '.join(empty)} split; every split needs some")
    return splits, meta


def split_data(batch: TaskBatch, input_key: str | None, device: torch.device) -> dict:
    """A split's tensors on ``device``; a mapper's input stays on disk when it is a view store (read per batch)."""
    unlabelled = int((~batch.optimal_actions.reshape(len(batch.optimal_actions), -1).any(axis=1)).sum())
    if unlabelled:
        raise ValueError(f"{unlabelled} maps of the dataset have no cell with an optimal action (goal unreachable)")
    data = task_tensors(batch, device)  # extras on disk (a view store) stay there
    if input_key is not None:
        if input_key not in batch.extras:
            raise ValueError(f"the dataset has no {input_key!r} for the mapper (extras: {sorted(batch.extras)})")
        source = batch.extras[input_key]
        data["mapper_input"] = source if isinstance(source, view_store.ViewStore) else data[input_key]
    return data


def run(config: RunConfig) -> dict:
    """Train, validate every epoch, keep the best and the last checkpoint, and return the test report.

    Started by ``torchrun --nproc_per_node N``, it trains data-parallel (DDP; each rank takes an equal shard of every
    epoch, so the effective batch is N x --batch-size) and only rank 0 writes checkpoints, logs and the report."""
    started = start_distributed(config.device)
    try:
        return train_and_report(config)
    finally:
        if started:
            dist.destroy_process_group()


def train_and_report(config: RunConfig) -> dict:
    config = dataclasses.replace(config, env=resolve_env_id(config.env))  # the caller's config is left as it was
    planner_kwargs = config.planner_kwargs()
    try:  # the step's own checks (an even kernel, a discount of 1.5) before any dataset is made
        make_planner(config.planner, **planner_kwargs)
    except ValueError as exc:
        raise ValueError(f"--planner {config.planner}: {exc}") from None
    device = run_device(config.device)
    rank, world = rank_and_world()
    is_main = rank == 0
    if config.threads:
        torch.set_num_threads(config.threads)
    out = Path(config.out)
    if is_main:
        prepare_out_dir(out)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)

    with main_process_first():
        splits, meta = load_or_generate_dataset(config)
    topology = meta["topology"]
    shape = tuple(meta["shape"])
    probe = gym.make(config.env, **env_kwargs(config))
    input_key = mapper_input_key(probe.observation_space.keys())
    probe.close()
    data = {name: split_data(splits[name], input_key, device) for name in ("train", "val", "test")}
    planner = make_planner(config.planner, topology=topology, **planner_kwargs).to(device)
    planner.step.fused, planner.step.compile = config.fused, config.compile
    mapper = make_mapper(input_key, shape).to(device) if input_key else None
    params = list(planner.parameters()) + (list(mapper.parameters()) if mapper is not None else [])
    optimizer = torch.optim.RMSprop(params, lr=config.lr)
    run_config = {
        "planner": config.planner,
        "planner_kwargs": resolved_planner_kwargs(planner),
        "topology": topology,
        "env_id": config.env,
        "mapper": {"input": input_key, "shape": list(shape)} if mapper is not None else None,
        "run": asdict(config),
    }
    phases = epoch_phases(config.epochs, config.mapper_epochs, config.planner_epochs, mapper is not None)
    settings = EpochSettings(config.batch_size, config.clip, config.map_loss_weight, config.progress)
    if not phases and not config.resume:
        raise ValueError(
            "no epochs to train (--epochs 0), so this run has no checkpoint to test; to test a trained run again "
            "pass --resume with its settings, or load its best.pt with PlannerPolicy.load"
        )
    if is_main:
        check_free_space(out, [m for m in (planner, mapper) if m is not None])
    history: list[dict] = []
    start_epoch, best = 0, -1.0
    best_is_this_runs = config.resume  # a fresh run never tests a best.pt that an earlier run left in --out
    last_path, best_path = out / "last.pt", out / "best.pt"
    if config.resume:
        if not last_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {last_path}")
        state = load_checkpoint(last_path, map_location=device)
        changed = resume_differences(state["config"]["run"], config)
        # the planner's settings are compared as the planners they build, not as flags: a flag left to its default
        # may have a new default since (ConvGPPN's cell and budgets), and a flag the run never had must not block it
        saved = legacy_planner_kwargs(state["config"], state["model"])
        built = resolved_planner_kwargs(planner)
        for k in sorted(k for k in built if k in saved and saved[k] != built[k]):
            changed.setdefault(FIELD_OF_FIXED_POINT.get(k, k), (saved[k], built[k]))
        if changed:
            settings = "; ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in changed.items())
            raise ValueError(f"--resume: {last_path} was trained with other settings for {settings}")
        planner.load_state_dict(state["model"])
        if mapper is not None:
            mapper.load_state_dict(state["mapper"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"])
        start_epoch, best, history = state["epoch"] + 1, state["best_success"], state["history"]
        if is_main:
            print(f"resuming {out} after epoch {start_epoch}")
    if config.memory_budget_gb is not None:
        modules = [m for m in (planner, mapper) if m is not None]
        on_device = [t for split in data.values() for t in split.values() if isinstance(t, torch.Tensor)]
        step = functools.partial(first_batch_step, planner, mapper, data["train"], config.batch_size)
        apply_memory_budget(config.memory_budget_gb, modules, on_device, step, device)
    trained_planner, trained_mapper = data_parallel(planner, device), data_parallel(mapper, device)

    writer = tensorboard_writer(out) if is_main else None
    for epoch in range(start_epoch, len(phases)):
        phase = phases[epoch]
        desc = f"epoch {epoch + 1}/{len(phases)}" + (f" ({phase})" if mapper is not None else "")
        row = {"epoch": epoch + 1, "phase": phase, "lr": epoch_lr(config.lr, config.lr_schedule, epoch, len(phases))}
        for group in optimizer.param_groups:
            group["lr"] = row["lr"]
        row.update(train_epoch(phase, trained_planner, trained_mapper, optimizer, data["train"], settings, desc, epoch))
        val, val_map_accuracy = evaluate(planner, mapper, data["val"], config.eval_batch_size)
        row.update(val_success=val.success, val_optimal=val.optimal, val_spl=val.spl)
        row.update(probe_spectral_radius(planner, data["val"]))
        if mapper is not None:
            row["val_map_accuracy"] = val_map_accuracy
        history.append(row)
        improved = val.success > best
        best = max(best, val.success)
        checkpoint = {
            "config": run_config,
            "model": planner.state_dict(),
            "mapper": mapper.state_dict() if mapper is not None else None,
            "optimizer": optimizer.state_dict(),
            "epoch": epoch,
            "best_success": best,
            "history": history,
            "rng": rng_state(),
            "val": {**val.as_dict(), "map_accuracy": val_map_accuracy},
        }
        if not is_main:
            continue
        if improved:
            save_checkpoint(best_path, checkpoint)
            best_is_this_runs = True
        save_checkpoint(last_path, checkpoint)
        write_metrics_csv(out / "metrics.csv", history)
        if writer is not None:
            for key, value in row.items():
                if key not in ("epoch", "phase"):
                    writer.add_scalar(key, value, epoch + 1)
        mapped = f"  map accuracy {val_map_accuracy:.3f}" if mapper is not None else ""
        print(
            f"{desc}: loss {row['train_loss']:.4f}  accuracy {row['train_accuracy']:.3f}  val {val}{mapped}  "
            f"({row['train_seconds']:.0f} s, {row['maps_per_second']:.0f} maps/s)\n  {fixed_point_line(row)}"
        )
    if writer is not None:
        writer.close()
    barrier()  # the other ranks wait for rank 0's checkpoints
    if not best_path.exists() or (is_main and not best_is_this_runs):
        raise ValueError(f"no epoch finished, so there is no checkpoint to test (epochs={config.epochs})")
    if not is_main:
        barrier()  # and for its test report
        return json.loads((out / "test_report.json").read_text())

    best_state = load_checkpoint(best_path, map_location=device)
    planner.load_state_dict(best_state["model"])
    if mapper is not None:
        mapper.load_state_dict(best_state["mapper"])
    test, test_map_accuracy = evaluate(planner, mapper, data["test"], config.eval_batch_size)
    report = {
        "env": config.env,
        "env_kwargs": env_kwargs(config),
        "planner": config.planner,
        "best_epoch": best_state["epoch"] + 1,
        "test": {**test.as_dict(), "map_accuracy": test_map_accuracy},
        "val": best_state["val"],
        "denominator": "every free start cell from which the goal is reachable (start != goal), all test maps",
        "config": run_config,
        "dataset": str(config.dataset_path()),
        "processes": world,
    }
    with atomic_write(out / "test_report.json") as f:
        f.write(json.dumps(report, indent=2).encode())
    print_report(report)
    if config.gif:
        gif = render_test_episode(planner, mapper, input_key, splits["test"], config, out / "rollout.gif", test.success)
        print(f"rendered a test episode to {gif}")
    barrier()
    return report


def resolved_planner_kwargs(planner) -> dict:
    """Every fixed-point setting and step hyperparameter the planner was built with, defaults included, so a
    checkpoint rebuilds the same planner whatever later versions choose as defaults."""
    fixed_point = {k: getattr(planner.fixed_point, k) for k in FIXED_POINT_KEYS}
    step = {k: getattr(planner.step, k) for k in step_hyperparameters(type(planner.step))}
    return {**fixed_point, **step}


def render_test_episode(
    planner, mapper, input_key, tasks: TaskBatch, config: RunConfig, path: Path, success: float
) -> Path:
    """A captioned GIF of the trained policy on a test task where planning matters (`rollouts.video.showcase_gif`)."""
    policy = PlannerPolicy(planner, next(planner.parameters()).device, mapper, input_key)
    title = f"{config.planner} on {config.env.removeprefix('IDP/')}: test %Success {100 * success:.1f}"
    return showcase_gif(
        lambda **kwargs: gym.make(config.env, **env_kwargs(config), **kwargs), policy, tasks, title, path
    )


def main(argv: list[str] | None = None) -> dict:
    try:
        config = parse_config(argv, build_parser(description=__doc__.split("\n\n")[0], exit_on_error=False))
    except (ValueError, argparse.ArgumentError) as exc:  # before any dataset is made, naming the flag
        raise SystemExit(f"error: {exc}") from exc
    try:
        return run(config)
    except (ValueError, FileNotFoundError, MemoryBudgetExceeded) as exc:
        raise SystemExit(f"error: {exc}") from exc
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        what = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise SystemExit(
            f"error: could not write or read{where}: {what}. Files saved before are whole (written atomically); fix "
            f"that, then {how_to_continue(config)}"
        ) from exc
    except KeyboardInterrupt:
        print(f"error: interrupted; {how_to_continue(config)}", file=sys.stderr)
        raise SystemExit(130) from None


def how_to_continue(config: RunConfig) -> str:
    """What to run after a run stopped: resume it when it has a finished epoch, else start it again."""
    last = Path(config.out) / "last.pt"
    if last.is_file():
        return f"rerun the same command with --resume to continue after the last finished epoch ({last})"
    return "rerun the command (no epoch had finished, so there is nothing to resume)"


if __name__ == "__main__":
    main()
