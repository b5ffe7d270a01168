"""Host synchronisations and operator calls per training step of trained implicit planners, with the tolerances
they were trained with and without them (fixed budgets).

For each checkpoint: 4 batches of 32 training maps of its dataset; per step (forward solve, loss with regulariser,
backward solve) the host synchronisations and top-level operator calls that torch.profiler counts
(``training.count_host_syncs_and_ops``; the same counts on a CPU and a GPU) and the solves' iterations, medians
over the batches, and the most host syncs of any batch (a batch whose forward solve continues stragglers reads once
more)::

    python -m benchmarks.host_syncs runs/bench_learning-cpu/maze15/id-vin/kdefault/seed0/last.pt ...
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import torch

from benchmarks.trained import load_with_split, rebuilt
from idp_agents.implicit import NonConvergenceWarning
from idp_agents.policy import legacy_planner_kwargs
from idp_agents.training import count_host_syncs_and_ops, planner_loss


def step_counts(planner, maps, optimal) -> tuple[int, int, int, int]:
    """(host syncs, operators, forward iterations, backward iterations) of one training step."""
    outputs = []

    def step():
        output = planner(maps)
        planner_loss(output, optimal).backward()
        outputs.append(output)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonConvergenceWarning)
        syncs, operators = count_host_syncs_and_ops(step)
    planner.zero_grad(set_to_none=True)
    info = outputs[0].info
    return syncs, operators, info.forward.iterations, sum(b.iterations for b in info.backward)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.host_syncs", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--batches", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(
        "| planner | env | tolerances | host syncs | most host syncs | operators | forward iterations "
        "| backward iterations |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for path in args.checkpoints:
        trained, train = load_with_split(path)
        run = trained.config["run"]
        kwargs = legacy_planner_kwargs(trained.config, trained.planner.state_dict())
        for label, changes in (("on", {}), ("off", {"tol_fwd": None, "tol_bwd": None})):
            planner = rebuilt(trained, **kwargs | changes)
            rows = [
                step_counts(
                    planner, train["maps"][32 * b : 32 * b + 32], train["optimal_actions"][32 * b : 32 * b + 32]
                )
                for b in range(args.batches)
            ]
            medians = [statistics.median(column) for column in zip(*rows, strict=True)]
            medians.insert(1, max(row[0] for row in rows))
            print(
                f"| {trained.config['planner']} | {run['env'].removeprefix('IDP/')} | {label} | "
                + " | ".join(f"{m:g}" for m in medians)
                + " |"
            )


if __name__ == "__main__":
    main()
