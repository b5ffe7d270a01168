"""Imitation learning pieces: the dense loss over all cells, accuracy, and batched closed-loop evaluation."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from idp_agents.fixed_point_config import FixedPointInfo
from idp_agents.planners import Planner
from idp_agents.planners.base import PlannerOutput
from idp_agents.solvers import SolverInfo
from rollouts.metrics import PlanningMetrics, policy_metrics


def imitation_loss(logits: Tensor, optimal: Tensor) -> Tensor:
    """Cross-entropy against the set of optimal actions, averaged over every cell that has one.

    Each cell contributes -log P(an optimal action) = -log sum_{a optimal} softmax(logits)_a, so ties between
    equally short paths are not broken arbitrarily; with one optimal action it is the usual cross-entropy.
    ``logits`` (B, 4, H, W), ``optimal`` (B, 4, H, W) bool. A batch without any labelled cell gives 0. Nothing is
    read on the host (no boolean indexing), so a training step does not wait for the device here.
    """
    cells = optimal.any(dim=1)
    log_p = F.log_softmax(logits.float(), dim=1)
    log_p_optimal = torch.logsumexp(log_p.masked_fill(~optimal, float("-inf")), dim=1)
    return -log_p_optimal.masked_fill(~cells, 0).sum() / cells.sum().clamp_min(1)


def planner_loss(output: PlannerOutput, optimal: Tensor) -> Tensor:
    """What training minimises for a planner's output: the imitation loss, plus its fixed-point regularisers' loss
    when they ran (``info.jac_loss``)."""
    loss = imitation_loss(output.logits, optimal)
    return loss if output.info.jac_loss is None else loss + output.info.jac_loss


def action_accuracy(logits: Tensor, optimal: Tensor) -> Tensor:
    """Fraction of cells with an optimal action where the argmax action is one of them."""
    cells = optimal.any(dim=1)
    hit = optimal.gather(1, logits.argmax(dim=1, keepdim=True)).squeeze(1)
    return (hit & cells).sum() / cells.sum().clamp_min(1)


class FixedPointStats:
    """Final relative residuals and non-converged shares of the forward and backward solves over many calls, and
    the share of forward solves still above tolerance at their cap ``k_fwd`` (``fwd_over_cap``: those the
    stragglers' continuation took on; equal to ``fwd_nonconverged`` without it).

    Summed on the device (no host reads per batch); ``summary()`` reads them once. Unrolled planners make no solves,
    so their entries are NaN. A solve run without a tolerance counts as not converged.
    """

    KINDS = ("fwd", "bwd")

    def __init__(self, device: torch.device) -> None:
        # per kind: residual sum, residual max, non-converged count, sample count
        self.totals = torch.zeros(len(self.KINDS), 4, dtype=torch.float64, device=device)
        self.over_cap = torch.zeros(2, dtype=torch.float64, device=device)  # count above tol at k_fwd, sample count

    def _add(self, kind: int, solve: SolverInfo) -> None:
        residual = solve.final_residual.detach().to(torch.float64)
        self.totals[kind, 0] += residual.sum()
        self.totals[kind, 1] = torch.maximum(self.totals[kind, 1], residual.max())
        self.totals[kind, 2] += (~solve.converged).sum()
        self.totals[kind, 3] += residual.numel()

    def add(self, info: FixedPointInfo) -> None:
        """Take note of one planner call's solves (call after backward, which fills in the backward solves)."""
        if info.forward is not None:
            self._add(0, info.forward)
        if info.over_cap is not None:
            self.over_cap[0] += info.over_cap.sum()
            self.over_cap[1] += info.over_cap.numel()
        for solve in info.backward:
            self._add(1, solve)

    def summary(self) -> dict[str, float]:
        totals = self.totals.tolist()
        row = {}
        for kind, (residual_sum, residual_max, nonconverged, count) in zip(self.KINDS, totals, strict=True):
            row[f"{kind}_residual_mean"] = residual_sum / count if count else float("nan")
            row[f"{kind}_residual_max"] = residual_max if count else float("nan")
            row[f"{kind}_nonconverged"] = nonconverged / count if count else float("nan")
        over_cap, count = self.over_cap.tolist()
        row["fwd_over_cap"] = over_cap / count if count else float("nan")
        return row


def planner_actions(planner: Planner, maps: Tensor, batch_size: int = 256) -> Tensor:
    """(N, H, W) argmax actions of the planner on (N, 2, H, W) maps, in batches, without autograd."""
    was_training = planner.training
    planner.eval()
    with torch.inference_mode():
        actions = torch.cat(
            [planner(maps[i : i + batch_size]).logits.argmax(dim=1) for i in range(0, len(maps), batch_size)]
        )
    planner.train(was_training)
    return actions


def evaluate_planner(
    planner: Planner,
    tensors: dict,
    batch_size: int = 256,
    max_steps: int | None = None,
    planner_maps: Tensor | None = None,
) -> PlanningMetrics:
    """%Success / %Optimal / SPL of the planner's argmax policy from every reachable start of every map.

    The policy plans on ``planner_maps`` when given (a mapper's maps) and is always scored on the true grid.
    """
    actions = planner_actions(planner, tensors["maps"] if planner_maps is None else planner_maps, batch_size)
    return policy_metrics(
        actions,
        tensors["maps"][:, 0].to(torch.uint8),
        tensors["goal"],
        tensors["distances"],
        planner.topology,
        max_steps,
    )


def batch_rows(source, index: Tensor) -> Tensor:
    """Rows ``index`` of a tensor, or of a numpy array or view store (read from disk only for those rows)."""
    if isinstance(source, Tensor):
        return source[index.to(source.device)]
    return torch.from_numpy(np.ascontiguousarray(source[index.cpu().numpy()]))


def mapper_logits(mapper: torch.nn.Module, inputs, batch_size: int = 64, device=None) -> Tensor:
    """(N, H, W) obstacle logits of a mapper over all its inputs (a tensor or a view store), without autograd."""
    was_training = mapper.training
    mapper.eval()
    chunks = []
    with torch.inference_mode():
        for i in range(0, len(inputs), batch_size):
            index = torch.arange(i, min(i + batch_size, len(inputs)))
            chunks.append(mapper(batch_rows(inputs, index).to(device)))
    mapper.train(was_training)
    return torch.cat(chunks)


def autograd_saved_bytes(run: Callable[[], object]) -> int:
    """Bytes of distinct storage that autograd saves for backward while ``run()`` executes (a tensor saved by
    several operations, such as a weight reused by every layer, counts once)."""
    storages: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(storages.values())


# Operators that make the host wait for the device: reading a scalar (item, bool(), int()), and nonzero, whose
# output size depends on the data (boolean indexing, masked_select). Counted as they run, on any device.
HOST_SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero")


def count_host_syncs_and_ops(run: Callable[[], object]) -> tuple[int, int]:
    """(host synchronisations, top-level operator calls) while ``run()`` executes, from torch.profiler's CPU events.

    The counts depend on the code path, not on the device, so a CPU count is the CUDA count. Top-level operators are
    aten calls not made from inside another aten call: about one kernel launch each on a GPU (more for composite
    ones such as a convolution's backward).
    """
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # else the profiler writes 'USDT: profiler_start' lines to stderr
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run()
    events = [e for e in profile.events() if e.name.startswith("aten::")]
    syncs = sum(e.name in HOST_SYNC_OPS for e in events)
    top_level = sum(e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::") for e in events)
    return syncs, top_level
