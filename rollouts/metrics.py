"""%Success, %Optimal and SPL of a policy map from every start cell of every map, as batched tensor operations.

A policy map gives one action per cell. Following it is a deterministic successor function on cells, so the
step at which each start first reaches the goal is found for all starts of all maps at once by binary lifting
(successor tables raised to powers of two), in O(log max_steps) gathers instead of max_steps simulation steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from idp_envs.grid import ACTION_DELTAS, check_topology


def successor_table(occupancy: Tensor, topology: str = "plane") -> Tensor:
    """(N, 4, H*W) flat index of the cell each action leads to; blocked moves and moves off a plane stay put."""
    check_topology(topology)
    n, h, w = occupancy.shape
    device = occupancy.device
    rows = torch.arange(h, device=device).view(h, 1).expand(h, w)
    cols = torch.arange(w, device=device).view(1, w).expand(h, w)
    here = (rows * w + cols).reshape(-1)
    free = (occupancy == 0).reshape(n, -1)
    out = []
    for dr, dc in ACTION_DELTAS.tolist():
        r, c = rows + dr, cols + dc
        if topology == "torus":
            r, c = r % h, c % w
            inside = torch.ones(h * w, dtype=torch.bool, device=device)
        else:
            inside = ((r >= 0) & (r < h) & (c >= 0) & (c < w)).reshape(-1)
            r, c = r.clamp(0, h - 1), c.clamp(0, w - 1)
        target = (r * w + c).reshape(-1)
        ok = inside & free[:, target]
        out.append(torch.where(ok, target, here))
    return torch.stack(out, dim=1)


def hitting_times(actions: Tensor, occupancy: Tensor, goal: Tensor, topology: str, max_steps: int) -> Tensor:
    """(N, H, W): steps until an agent starting at each cell and following ``actions`` (N, H, W) reaches the goal;
    -1 if it does not arrive within ``max_steps``; 0 at the goal itself."""
    n, h, w = actions.shape
    succ_all = successor_table(occupancy, topology)
    succ = succ_all.gather(1, actions.reshape(n, 1, -1).clamp(0, 3).long()).squeeze(1)  # (N, HW)
    goal_idx = (goal[:, 0] * w + goal[:, 1]).long()
    rows = torch.arange(n, device=actions.device)
    succ[rows, goal_idx] = goal_idx  # the goal absorbs
    levels = [succ]  # levels[k] = succ applied 2^k times
    while 2 ** len(levels) <= max_steps:
        levels.append(levels[-1].gather(1, levels[-1]))
    cur = torch.arange(h * w, device=actions.device).expand(n, -1).clone()
    at_goal = cur == goal_idx[:, None]
    steps = torch.zeros_like(cur)
    # the largest t < max_steps with succ^t(start) != goal, by greedy powers of two (the goal absorbs, so the
    # predicate is monotone in t); the goal is then reached at t + 1 if one more step lands on it
    for k in reversed(range(len(levels))):
        nxt = levels[k].gather(1, cur)
        move = (nxt != goal_idx[:, None]) & (steps + 2**k <= max_steps - 1) & ~at_goal
        cur = torch.where(move, nxt, cur)
        steps = steps + move.long() * 2**k
    arrives = succ.gather(1, cur) == goal_idx[:, None]
    times = torch.where(at_goal, torch.zeros_like(steps), torch.where(arrives, steps + 1, -torch.ones_like(steps)))
    return times.view(n, h, w)


@dataclass
class PlanningMetrics:
    """Closed-loop scores over every (map, start) pair with the goal reachable from the start (start != goal)."""

    success: float  # fraction reaching the goal within the step cap
    optimal: float  # fraction reaching it in exactly the BFS distance
    spl: float  # mean of success * distance / max(path length, distance)
    starts: int  # the denominator: reachable free start cells, all maps together
    maps: int
    max_steps: int

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"%Success {100 * self.success:.1f}  %Optimal {100 * self.optimal:.1f}  SPL {self.spl:.3f}  "
            f"(over {self.starts} reachable start cells of {self.maps} maps, cap {self.max_steps} steps)"
        )


def policy_metrics(
    actions: Tensor,
    occupancy: Tensor,
    goal: Tensor,
    distances: Tensor,
    topology: str = "plane",
    max_steps: int | None = None,
) -> PlanningMetrics:
    """Score a policy map (N, H, W) of actions against BFS ``distances`` (N, H, W), -1 unreachable.

    ``max_steps`` defaults to H * W: a deterministic policy that has not arrived after visiting every cell is
    in a loop, so the default counts every start that ever arrives.
    """
    n, h, w = actions.shape
    if occupancy.shape != actions.shape or distances.shape != actions.shape or goal.shape != (n, 2):
        raise ValueError(
            f"shapes disagree: actions {tuple(actions.shape)}, occupancy {tuple(occupancy.shape)}, "
            f"distances {tuple(distances.shape)}, goal {tuple(goal.shape)} (expected (N, 2))"
        )
    max_steps = int(max_steps or h * w)
    times = hitting_times(actions, occupancy, goal, topology, max_steps)
    starts = distances > 0
    count = int(starts.sum())
    if count == 0:
        raise ValueError("no map has a reachable start cell distinct from its goal")
    reached = (times >= 0) & starts
    d = distances.clamp(min=1).float()
    spl = torch.where(reached, d / torch.maximum(times.float(), d), torch.zeros_like(d))
    return PlanningMetrics(
        success=float(reached.sum()) / count,
        optimal=float((reached & (times == distances)).sum()) / count,
        spl=float(spl[starts].sum()) / count,
        starts=count,
        maps=n,
        max_steps=max_steps,
    )
