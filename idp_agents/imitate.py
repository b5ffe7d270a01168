"""Train a planner by imitation of BFS-optimal actions, evaluate it closed-loop, and report on the test split.

    python -m idp_agents.imitate --env GridMaze-15 --planner id-vin

Every hyperparameter is a flag. The defaults are small enough to finish on a 2-core CPU in a few minutes; the
published protocol (GPPN's, which the implicit-planning paper follows) is
``--train 10000 --val 2000 --test 2000 --epochs 30`` with the defaults batch 32, RMSprop lr 1e-3, clip 40, K 30.
"""

from __future__ import annotations

import argparse
import errno
import functools
import json
import math
import random
import sys
from dataclasses import asdict, dataclass
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
    LR_SCHEDULES,
    EpochSettings,
    epoch_lr,
    epoch_phases,
    evaluate,
    first_batch_step,
    probe_spectral_radius,
    train_epoch,
)
from idp_agents.implicit import FixedPointConfig
from idp_agents.mappers import make_mapper, mapper_input_key
from idp_agents.planners import FIXED_POINT_KEYS, PLANNERS, make_planner, step_hyperparameters
from idp_agents.planners.convgppn import CELLS
from idp_agents.policy import PlannerPolicy, legacy_planner_kwargs
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
from idp_agents.step_cost import MemoryBudgetExceeded, apply_memory_budget
from idp_envs import resolve_env_id, size_kwargs, view_store, views
from idp_envs.datasets import (
    DatasetError,
    check_dataset_fits_env,
    generate_splits,
    load_dataset,
    save_dataset,
    task_tensors,
)
from idp_envs.files import atomic_write
from idp_envs.tasks import TaskBatch
from rollouts.video import showcase_gif

# fixed-point flags whose default is the planner's (``PLANNERS[name].defaults``), and the setting each one names
PLANNER_DEFAULTED = {
    "k_fwd": "k_fwd",
    "k_fwd_stragglers": "k_fwd_stragglers",
    "k_bwd": "k_bwd",
    "jac_reg": "jac_reg_weight",
    "jac_reg_unconverged": "jac_reg_unconverged",
    "spectral_reg": "spectral_reg_weight",
    "spectral_reg_unconverged": "spectral_reg_unconverged",
    "spectral_target": "spectral_target",
    "gradient_gain_cap": "gradient_gain_cap",
}
STEP_FLAGS = ("l_h", "l_q", "hidden", "kernel", "group", "discount", "contraction", "cell", "forget_bound")
UNBOUNDED_WHEN_ZERO = ("discount", "contraction")


@dataclass
class RunConfig:
    """One training run; every field is a command-line flag of the same name."""

    env: str = "IDP/GridMaze-15-v0"
    size: int | None = None
    planner: str = "id-vin"
    k_fwd: int | None = None
    k_fwd_stragglers: int | None = None
    k_bwd: int | None = None
    solver_fwd: str = FixedPointConfig.solver_fwd
    solver_stragglers: str = FixedPointConfig.solver_stragglers
    solver_bwd: str = FixedPointConfig.solver_bwd
    tol_fwd: float | None = FixedPointConfig.tol_fwd
    tol_bwd: float | None = FixedPointConfig.tol_bwd
    gradient: str = FixedPointConfig.gradient
    jac_reg: float | None = None
    jac_reg_unconverged: float | None = None
    spectral_reg: float | None = None
    spectral_reg_unconverged: float | None = None
    spectral_target: float | None = None
    drop_unconverged: bool = FixedPointConfig.drop_unconverged
    gradient_gain_cap: float | None = None
    on_divergence: str = FixedPointConfig.on_divergence
    l_h: int | None = None
    l_q: int | None = None
    hidden: int | None = None
    kernel: int | None = None
    group: str | None = None
    discount: float | None = None
    contraction: float | None = None
    cell: str | None = None
    forget_bound: float | None = None
    epochs: int = 6
    mapper_epochs: int = 2
    planner_epochs: int = 2
    map_loss_weight: float = 1.0
    batch_size: int = 32
    lr: float = 1e-3
    lr_schedule: str = "late-cosine"
    clip: float | None = 40.0
    train: int = 2000
    val: int = 200
    test: int = 500
    data: str | None = None
    cache_dir: str = "data"
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    out: str = "runs/latest"
    resume: bool = False
    eval_batch_size: int = 128
    progress: bool = True
    gif: bool = True
    memory_budget_gb: float | None = None

    def planner_kwargs(self) -> dict:
        """Fixed-point settings and the step hyperparameters that were set; the rest keep the planner's defaults.

        A bound (``discount``, ``contraction``) of 0 asks for the unbounded step."""
        if self.planner not in PLANNERS:
            raise ValueError(f"unknown planner {self.planner!r}; valid names: {', '.join(sorted(PLANNERS))}")
        accepted = step_hyperparameters(PLANNERS[self.planner].step)
        step = {k: getattr(self, k) for k in STEP_FLAGS if getattr(self, k) is not None}
        rejected = sorted(set(step) - set(accepted))
        if rejected:
            raise ValueError(f"{self.planner} does not take {rejected}; its hyperparameters are {list(accepted)}")
        step.update({k: None for k in UNBOUNDED_WHEN_ZERO if step.get(k) == 0})
        fixed_point = {
            "solver_fwd": self.solver_fwd,
            "solver_stragglers": self.solver_stragglers,
            "solver_bwd": self.solver_bwd,
            "tol_fwd": self.tol_fwd,
            "tol_bwd": self.tol_bwd,
            "gradient": self.gradient,
            "drop_unconverged": self.drop_unconverged,
            "on_divergence": self.on_divergence,
        }
        for flag, key in PLANNER_DEFAULTED.items():
            if getattr(self, flag) is not None:
                fixed_point[key] = getattr(self, flag)
        return {**fixed_point, **step}

    def dataset_path(self) -> Path:
        if self.data:
            return Path(self.data)
        name = self.env.replace("/", "_") + (f"-size{self.size}" if self.size else "")
        return Path(self.cache_dir) / f"{name}-{self.train}-{self.val}-{self.test}-seed{self.seed}.npz"


def optional_float(text: str) -> float | None:
    """A float flag that also takes 'none'."""
    return None if text.lower() == "none" else float(text)


def default_note(key: str, default) -> str:
    """'default D; P V, ...' for a fixed-point setting: its default and the planners whose own defaults differ."""
    own = [f"{name} {spec.defaults[key]}" for name, spec in PLANNERS.items() if key in spec.defaults]
    return "; ".join([f"default {default}", *own])


def build_parser() -> argparse.ArgumentParser:
    defaults = RunConfig()
    p = argparse.ArgumentParser(prog="python -m idp_agents.imitate", description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--env", default=defaults.env, help="environment id, with or without the IDP/ prefix and -v0")
    add("--size", type=int, help="map size, for ids that take one (IDP/GridMaze-v0)")
    add("--planner", default=defaults.planner, help=f"one of {', '.join(sorted(PLANNERS))}")
    add(
        "--k",
        "--k-fwd",
        dest="k_fwd",
        type=int,
        help="unrolled layers, or the implicit forward solver's iteration cap "
        f"({default_note('k_fwd', FixedPointConfig.k_fwd)})",
    )
    add(
        "--k-fwd-stragglers",
        type=int,
        help="iterations more for the samples still above --tol-fwd after --k, solved apart from their batch "
        f"({default_note('k_fwd_stragglers', FixedPointConfig.k_fwd_stragglers)})",
    )
    add(
        "--k-bwd",
        type=int,
        help=f"the implicit backward solver's iteration cap ({default_note('k_bwd', FixedPointConfig.k_bwd)})",
    )
    add("--solver-fwd", default=defaults.solver_fwd, help="forward | anderson | broyden")
    add(
        "--solver-stragglers",
        default=defaults.solver_stragglers,
        help="the solver that continues the samples still above --tol-fwd at the cap: forward (the plain iteration, "
        "which converges wherever the fixed point attracts) | anderson | broyden",
    )
    add("--solver-bwd", default=defaults.solver_bwd, help="forward | anderson | broyden")
    add(
        "--tol-fwd",
        type=optional_float,
        default=defaults.tol_fwd,
        help="stop the forward solve at this relative residual (none: always run --k iterations)",
    )
    add(
        "--tol-bwd",
        type=optional_float,
        default=defaults.tol_bwd,
        help="stop the backward solve at this relative residual (none: always run --k-bwd iterations)",
    )
    add("--gradient", default=defaults.gradient, help="implicit (IFT backward solve) | phantom")
    add(
        "--jac-reg",
        type=float,
        help="weight of the Jacobian regulariser on every sample (default: the planner's, 0 for all)",
    )
    add(
        "--jac-reg-unconverged",
        type=float,
        help="weight of the Jacobian regulariser on the samples whose forward solve missed --tol-fwd instead "
        f"(default: --jac-reg; id-convgppn {PLANNERS['id-convgppn'].defaults['jac_reg_unconverged']})",
    )
    add(
        "--spectral-reg",
        type=float,
        help="weight of the penalty relu(rho - --spectral-target)^2 on each sample's spectral radius rho at its fixed "
        f"point (default: the planner's; id-convgppn {PLANNERS['id-convgppn'].defaults.get('spectral_reg_weight', 0)})",
    )
    add(
        "--spectral-reg-unconverged",
        type=float,
        help="weight of that penalty on the samples whose forward solve missed --tol-fwd instead (default: "
        "--spectral-reg)",
    )
    add(
        "--spectral-target",
        type=float,
        help=f"spectral radius above which --spectral-reg penalises (default {FixedPointConfig.spectral_target})",
    )
    add(
        "--keep-unconverged",
        dest="drop_unconverged",
        action="store_false",
        help="let the samples whose forward solve missed --tol-fwd into the implicit gradient (default: left out)",
    )
    add(
        "--gradient-gain-cap",
        type=float,
        help="scale each sample's implicit gradient w down to ||w|| <= cap ||g|| (default: the planner's, none)",
    )
    add(
        "--on-divergence",
        default=defaults.on_divergence,
        help="when a fixed-point solve diverges: raise (stop the run) | warn (report it and go on)",
    )
    add("--l-h", type=int, help="VIN/SymVIN hidden channels (default 150 for VIN)")
    add("--l-q", type=int, help="VIN/SymVIN Q channels (default 100 for VIN)")
    add("--hidden", type=int, help="ConvGPPN hidden channels (default 40)")
    add(
        "--contraction",
        type=float,
        help="ConvGPPN: bound the hidden-gate filters so the step contracts by at most this factor (default: none)",
    )
    add(
        "--cell",
        choices=CELLS,
        help="ConvGPPN: the recurrent cell, lstm (GPPN's own; state h and c) or gru (state h) (default lstm)",
    )
    add(
        "--forget-bound",
        type=float,
        help="ConvGPPN LSTM: scale the forget gate into (0, this bound), so the cell state contracts (default 0.9; "
        "1: unbounded)",
    )
    add("--kernel", type=int, help="Bellman step kernel size (default: VIN/SymVIN 5, ConvGPPN 3)")
    add("--group", help="SymVIN symmetry group: c4 | d4")
    add(
        "--discount",
        type=float,
        help="VIN/SymVIN: bound on each value filter's L1 norm, which makes the step a contraction (default 0.95; "
        "0: unbounded)",
    )
    add("--epochs", type=int, default=defaults.epochs)
    add(
        "--mapper-epochs",
        type=int,
        default=defaults.mapper_epochs,
        help="envs observed through a mapper: epochs pre-training the mapper alone (BCE on the true map)",
    )
    add(
        "--planner-epochs",
        type=int,
        default=defaults.planner_epochs,
        help="envs observed through a mapper: epochs pre-training the planner alone on true maps",
    )
    add(
        "--map-loss-weight",
        type=float,
        default=defaults.map_loss_weight,
        help="weight of the mapper's BCE beside the imitation loss in end-to-end epochs",
    )
    add("--batch-size", type=int, default=defaults.batch_size)
    add("--lr", type=float, default=defaults.lr, help="RMSprop learning rate")
    add(
        "--lr-schedule",
        default=defaults.lr_schedule,
        choices=LR_SCHEDULES,
        help="late-cosine (default): lr for the first half of the epochs, then a cosine decay over the rest; "
        "constant (the published protocol); cosine: each epoch's rate lr (1 + cos(pi e / epochs)) / 2, "
        "e = 0, 1, ...",
    )
    add("--clip", type=float, default=defaults.clip, help="gradient-norm clip (<= 0: none)")
    add("--train", type=int, default=defaults.train, help="training maps (generated when --data is not given)")
    add("--val", type=int, default=defaults.val)
    add("--test", type=int, default=defaults.test)
    add("--data", help="a dataset file from python -m idp_envs.datasets (overrides the sizes)")
    add("--cache-dir", default=defaults.cache_dir, help="where generated datasets are cached")
    add("--device", default=defaults.device, help="auto (CUDA when present) | cpu | cuda | cuda:N")
    add("--threads", type=int, help="CPU threads for torch (default: torch's choice, one per core)")
    add("--seed", type=int, default=defaults.seed)
    add("--out", default=defaults.out, help="run directory: checkpoints, metrics.csv, test_report.json")
    add("--resume", action="store_true", help="continue from OUT/last.pt")
    add("--eval-batch-size", type=int, default=defaults.eval_batch_size)
    add("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add("--no-gif", dest="gif", action="store_false", help="do not render a test episode to OUT/rollout.gif")
    add(
        "--memory-budget-gb",
        type=float,
        help="CUDA: cap the allocator at this many GB; CPU: refuse the run when the first training batch needs more",
    )
    return p


# what a run had for a flag that its checkpoint predates, where that is not today's default
BEFORE_THE_FLAG = {"lr_schedule": "constant", "solver_stragglers": "anderson"}
# the run's flags a resumed run must share with its checkpoint; the planner's settings (PLANNER_DEFAULTED, STEP_FLAGS
# and every other fixed-point setting) are compared as the planners they build, since a default may change between
# versions
COMPARED_ON_RESUME = (
    "env",
    "size",
    "planner",
    "solver_fwd",
    "solver_stragglers",
    "solver_bwd",
    "gradient",
    "batch_size",
    "lr",
    "lr_schedule",
    "train",
    "val",
    "test",
    "data",
    "seed",
    "tol_fwd",
    "tol_bwd",
    "drop_unconverged",
    "clip",
    "on_divergence",
    "mapper_epochs",
    "planner_epochs",
    "map_loss_weight",
)


def env_kwargs(config: RunConfig) -> dict:
    return size_kwargs(config.env, config.size)


def load_or_generate_dataset(config: RunConfig) -> tuple[dict, dict]:
    path = config.dataset_path()
    if not path.exists():
        if config.data:
            raise FileNotFoundError(f"--data {path} does not exist")
        counts = {"train": config.train, "val": config.val, "test": config.test}
        splits, meta = generate_splits(config.env, counts, config.seed, env_kwargs(config), progress=config.progress)
        save_dataset(path, splits, meta)
    if views.env_renders_views(config.env):  # renders what an interrupted run left missing; nothing when complete
        splits, _ = load_dataset(path, with_views=False)
        view_store.render_dataset_views(path, splits, progress=config.progress)
    splits, meta = load_dataset(path)
    missing = {"train", "val", "test"} - set(splits)
    if missing:
        raise ValueError(f"dataset {path} lacks the splits {sorted(missing)}")
    if meta.get("env_id") and meta["env_id"] != config.env:
        raise ValueError(f"dataset {path} was made for {meta['env_id']}, not {config.env}")
    if meta.get("env_id") and meta.get("env_kwargs", {}) != env_kwargs(config):
        raise ValueError(f"dataset {path} was made with {meta.get('env_kwargs')}, not {env_kwargs(config)} (--size)")
    env = gym.make(config.env, **env_kwargs(config))
    check_dataset_fits_env(path, meta, env.unwrapped)
    env.close()
    empty = [name for name in ("train", "val", "test") if len(splits[name]) == 0]
    if empty:
        raise DatasetError(f"dataset {path} has no maps in its {', '.join(empty)} split; every split needs some")
    return splits, meta


def split_data(batch: TaskBatch, input_key: str | None, device: torch.device) -> dict:
    """A split's tensors on ``device``; a mapper's input stays on disk when it is a view store (read per batch)."""
    unlabelled = int((~batch.optimal_actions.reshape(len(batch.optimal_actions), -1).any(axis=1)).sum())
    if unlabelled:
        raise ValueError(f"{unlabelled} maps of the dataset have no cell with an optimal action (goal unreachable)")
    eager = {k: v for k, v in batch.extras.items() if not isinstance(v, view_store.ViewStore)}
    data = task_tensors(TaskBatch(*(getattr(batch, k) for k in TaskBatch.ARRAYS), batch.topology, eager), device)
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
    config.env = resolve_env_id(config.env)
    planner_kwargs = config.planner_kwargs()
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
        before = state["config"]["run"]
        # a flag newer than the checkpoint compares as what that run trained with: its value before the flag
        trained = {k: before.get(k, BEFORE_THE_FLAG.get(k, getattr(RunConfig, k))) for k in COMPARED_ON_RESUME}
        changed = {k: (v, getattr(config, k)) for k, v in trained.items() if v != getattr(config, k)}
        # the planner's settings are compared as the planners they build, not as flags: a flag left to its default
        # may have a new default since (ConvGPPN's cell and budgets), and a flag the run never had must not block it
        saved = legacy_planner_kwargs(state["config"], state["model"])
        built = resolved_planner_kwargs(planner)
        flag_of = {key: flag for flag, key in PLANNER_DEFAULTED.items()}
        for k in sorted(k for k in built if k in saved and saved[k] != built[k]):
            changed.setdefault(flag_of.get(k, k), (saved[k], built[k]))
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
        row.update(train_epoch(phase, trained_planner, trained_mapper, optimizer, data["train"], settings, desc))
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


def check_counts(config: RunConfig) -> None:
    """Clear errors for flags that would otherwise fail deep inside training."""
    for name in ("batch_size", "eval_batch_size", "train", "val", "test", "k_fwd", "k_bwd"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.k_fwd_stragglers is not None and config.k_fwd_stragglers < 0:
        raise ValueError(f"--k-fwd-stragglers must be non-negative, got {config.k_fwd_stragglers}")
    for name in ("epochs", "mapper_epochs", "planner_epochs"):
        if getattr(config, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be non-negative, got {getattr(config, name)}")
    if config.threads is not None and config.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {config.threads}")
    finite = (
        "lr",
        "clip",
        "map_loss_weight",
        "memory_budget_gb",
        "jac_reg",
        "jac_reg_unconverged",
        "spectral_reg",
        "spectral_reg_unconverged",
        "spectral_target",
        "discount",
        "contraction",
        "forget_bound",
    )
    for name in finite:
        value = getattr(config, name)
        if value is not None and not math.isfinite(value):  # NaN passes every comparison and trains to NaN
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    if config.lr <= 0:
        raise ValueError(f"--lr must be positive, got {config.lr}")
    if config.memory_budget_gb is not None and config.memory_budget_gb <= 0:
        raise ValueError(f"--memory-budget-gb must be positive, got {config.memory_budget_gb}")
    if not 0 <= config.seed < 2**32:
        raise ValueError(f"--seed must be between 0 and 2**32 - 1, got {config.seed}")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    config = RunConfig(**vars(args))
    try:
        check_counts(config)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from exc
    if config.clip is not None and config.clip <= 0:
        config.clip = None
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
