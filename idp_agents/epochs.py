"""One epoch of a training run: its learning rate and phase, a pass over the training split (by imitation of the
expert's actions, through the mapper when there is one), and the closed-loop evaluation and fixed-point probe that
follow it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from idp_agents.distributed import epoch_order, rank_and_world, sum_over_ranks
from idp_agents.mappers import cspace_accuracy, cspace_bce_loss
from idp_agents.planner_input import mapped_planner_maps
from idp_agents.training import (
    FixedPointStats,
    action_accuracy,
    batch_rows,
    evaluate_planner,
    mapper_logits,
    planner_loss,
)
from rollouts.metrics import PlanningMetrics

LR_SCHEDULES = ("constant", "cosine", "late-cosine")
PROBE_MAPS = 8


def batch_loss(phase: str, planner, mapper, data: dict, idx: torch.Tensor, map_loss_weight: float, step: int):
    """One batch's loss for a training ``phase`` (see `epoch_phases`): (loss, the planner's output or None, and the
    detached [loss, action accuracy, map accuracy] for the epoch's sums, 0 where the phase trains no planner or
    mapper). ``idx`` indexes the split on the CPU (memory-mapped inputs are read by it); ``step`` numbers the training
    step for the regularisers' schedule."""
    dev_idx = idx.to(data["maps"].device)
    optimal, true_maps = data["optimal_actions"][dev_idx], data["maps"][dev_idx]
    loss, output, map_logits = 0.0, None, None
    if phase in ("mapper", "joint"):
        map_logits = mapper(batch_rows(data["mapper_input"], idx).to(true_maps.device))
        loss = cspace_bce_loss(map_logits, true_maps[:, 0]) * (1.0 if phase == "mapper" else map_loss_weight)
    if phase in ("planner", "joint"):
        maps = true_maps if phase == "planner" else mapped_planner_maps(map_logits, data["goal"][dev_idx])
        output = planner(maps, step=step)
        loss = loss + planner_loss(output, optimal)
    zero = true_maps.new_zeros((), dtype=torch.float32)
    stats = torch.stack(
        [
            loss.detach(),
            action_accuracy(output.logits.detach(), optimal) if output is not None else zero,
            cspace_accuracy(map_logits.detach(), true_maps[:, 0]) if map_logits is not None else zero,
        ]
    )
    return loss, output, stats


def first_batch_step(planner, mapper, train: dict, batch_size: int) -> None:
    """One training step's forward and backward on the first batch (end to end through the mapper when there is
    one), without an optimizer step: what the memory budget measures."""
    idx = torch.arange(min(batch_size, len(train["maps"])))
    loss, _, _ = batch_loss("planner" if mapper is None else "joint", planner, mapper, train, idx, 1.0, step=0)
    loss.backward()


def epoch_lr(lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """The learning rate of 0-based ``epoch`` of ``epochs``: ``lr`` throughout (constant); its cosine decay (``lr``
    at the first epoch, lr (1 + cos(pi (epochs - 1) / epochs)) / 2 > 0 at the last); or late-cosine, ``lr`` for the
    first half of the epochs (``epochs // 2``), then the cosine's shape over the rest, ending at
    lr (1 + cos(pi n / (n + 1))) / 2 for the n epochs of that rest. A function of the epoch alone, so a resumed run
    continues the same schedule."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"--lr-schedule {schedule!r}: choose one of {', '.join(LR_SCHEDULES)}")
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        return lr * (1 + math.cos(math.pi * epoch / epochs)) / 2
    hold = epochs // 2
    if epoch < hold:
        return lr
    return lr * (1 + math.cos(math.pi * (epoch - hold + 1) / (epochs - hold + 1))) / 2


def epoch_phases(epochs: int, mapper_epochs: int, planner_epochs: int, has_mapper: bool) -> list[str]:
    """What each epoch trains: the planner alone on true maps, or (with a mapper) first the mapper alone, then the
    planner alone, then both end to end with the planner reading the mapper's map."""
    if not has_mapper:
        return ["planner"] * epochs
    return ["mapper"] * mapper_epochs + ["planner"] * planner_epochs + ["joint"] * epochs


def evaluate(planner, mapper, data: dict, batch_size: int) -> tuple[PlanningMetrics, float | None]:
    """Closed-loop metrics on the true grid of the planner's policy, which reads the mapper's map when there is one;
    and the mapper's cell accuracy."""
    if mapper is None:
        return evaluate_planner(planner, data, batch_size), None
    logits = mapper_logits(mapper, data["mapper_input"], batch_size, data["goal"].device)
    accuracy = float(cspace_accuracy(logits, data["maps"][:, 0]))
    maps = mapped_planner_maps(logits, data["goal"])
    return evaluate_planner(planner, data, batch_size, planner_maps=maps), accuracy


@dataclass(frozen=True)
class EpochSettings:
    """What one training epoch needs from the run's configuration."""

    batch_size: int
    clip: float | None
    map_loss_weight: float
    progress: bool


def train_epoch(
    phase: str, planner, mapper, optimizer, data: dict, settings: EpochSettings, desc: str, epoch: int
) -> dict:
    """One pass over the training split (0-based ``epoch`` of the run, which numbers its training steps for the
    regularisers' schedule); returns mean loss, action accuracy, map accuracy and the time taken."""
    planner.train()
    if mapper is not None:
        mapper.train()
    order = epoch_order(len(data["maps"]), data["maps"].device)
    n = len(order)
    # loss, action accuracy, map accuracy summed on the device: read back every few batches, not every one
    sums = torch.zeros(3, device=data["maps"].device)
    solves = FixedPointStats(data["maps"].device)
    batches, t0 = 0, time.perf_counter()
    bar = tqdm(range(0, n, settings.batch_size), desc=desc, disable=not settings.progress, leave=False)
    for i in bar:
        idx = order[i : i + settings.batch_size].sort().values  # sorted: memory-mapped inputs read in order
        step = epoch * math.ceil(n / settings.batch_size) + batches
        loss, output, stats = batch_loss(phase, planner, mapper, data, idx, settings.map_loss_weight, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if output is not None:
            solves.add(output.info)
        if settings.clip:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, settings.clip)
        optimizer.step()
        batches += 1
        sums += stats
        if settings.progress and batches % 10 == 0:
            mean_loss, mean_accuracy, _ = (sums / batches).tolist()
            seen = min(i + settings.batch_size, n)
            bar.set_postfix(
                loss=f"{mean_loss:.3f}",
                acc=f"{mean_accuracy:.3f}",
                maps_per_s=f"{seen / (time.perf_counter() - t0):.0f}",
            )
    seconds = time.perf_counter() - t0
    _, world = rank_and_world()
    sum_over_ranks(sums)
    mean_loss, mean_accuracy, mean_map_accuracy = (sums / (batches * world)).tolist()
    row = {
        "train_loss": mean_loss,
        "train_accuracy": mean_accuracy if phase != "mapper" else float("nan"),
        "train_seconds": seconds,
        "maps_per_second": n * world / seconds,
    }
    if mapper is not None:
        row["train_map_accuracy"] = mean_map_accuracy if phase != "planner" else float("nan")
    row.update(solves.summary())
    return row


def probe_spectral_radius(planner, data: dict) -> dict[str, float]:
    """Spectral radius of the step's Jacobian at its fixed point on the first validation maps (a fixed probe)."""
    radius = planner.spectral_radius(data["maps"][:PROBE_MAPS])
    return {"spectral_radius_mean": float(radius.mean()), "spectral_radius_max": float(radius.max())}
