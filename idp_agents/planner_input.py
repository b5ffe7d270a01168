"""What a planner reads: (B, 2, H, W) float maps, channel 0 the occupancy (1 = obstacle; a mapper's probabilities
where a mapper makes the map), channel 1 the goal as a one-hot map. This module is its one owner: datasets' tasks,
observations and mapped maps all become planner input here.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from idp_envs.tasks import TaskBatch
from idp_envs.view_store import ViewStore


def planner_maps(occupancy: Tensor, goal: Tensor) -> Tensor:
    """(B, 2, H, W) planner input from occupancy (B, H, W) (0/1, or probabilities: differentiable in them) and goal
    cells (B, 2) (row, col)."""
    if occupancy.ndim != 3:
        raise ValueError(f"occupancy must be (B, H, W) maps, got shape {tuple(occupancy.shape)}")
    b, h, w = occupancy.shape
    if goal.shape != (b, 2):
        raise ValueError(f"goal must have shape ({b}, 2) (row, col), got {tuple(goal.shape)}")
    # checked where the goal is given on the CPU (observations, datasets); a goal already on a GPU is not read back
    if goal.device.type == "cpu" and ((goal < 0) | (goal >= goal.new_tensor([h, w]))).any():
        raise ValueError(f"goal cells outside the {h}x{w} map: {goal.tolist()}")
    goal = goal.to(occupancy.device, torch.long)
    occupancy = occupancy if occupancy.is_floating_point() else occupancy.float()
    goal_map = torch.zeros_like(occupancy)
    goal_map[torch.arange(b, device=goal.device), goal[:, 0], goal[:, 1]] = 1.0
    return torch.stack([occupancy, goal_map], dim=1)


def mapped_planner_maps(obstacle_logits: Tensor, goal: Tensor) -> Tensor:
    """The planner input from a mapper's obstacle logits (B, H, W): their sigmoid as the occupancy, so a planner's
    loss trains the mapper end to end."""
    return planner_maps(torch.sigmoid(obstacle_logits), goal)


def task_tensors(batch: TaskBatch, device=None) -> dict:
    """A `TaskBatch` as tensors: ``maps`` (the planner input), ``optimal_actions``, ``distances``, ``goal``,
    ``start`` and the extras held in memory; extras on disk (a view store) are left there, to be read per batch."""
    occupancy, goal = torch.from_numpy(batch.occupancy), torch.from_numpy(batch.goal)
    out = {
        "maps": planner_maps(occupancy, goal),
        "optimal_actions": torch.from_numpy(batch.optimal_actions),
        "distances": torch.from_numpy(batch.distances.astype(np.int64)),
        "goal": goal,
        "start": torch.from_numpy(batch.start),
    }
    for key, value in batch.extras.items():
        if not isinstance(value, ViewStore):
            out[key] = torch.from_numpy(np.require(value, requirements="CW"))
    return {k: v.to(device) for k, v in out.items()} if device is not None else out


class PlanningDataset(torch.utils.data.Dataset):
    """A split as a `torch.utils.data.Dataset`: item i is a dict of tensors (`task_tensors`); extras on disk (a view
    store) are read per item."""

    def __init__(self, batch: TaskBatch) -> None:
        self.size = len(batch)
        self.tensors = task_tensors(batch)
        self.lazy = {k: v for k, v in batch.extras.items() if isinstance(v, ViewStore)}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        item = {k: v[i] for k, v in self.tensors.items()}
        item.update({k: torch.from_numpy(np.array(v[i])) for k, v in self.lazy.items()})
        return item
