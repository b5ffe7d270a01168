"""Closed-loop test success, forward residuals and training-step time of trained checkpoints under the code tree on
``PYTHONPATH``, with that tree's default straggler continuation (budget and solver) for each checkpoint's planner
(when it has one): run it under two trees (a ``git worktree`` of the older commit, and this one) to compare a change
on the same weights::

    PYTHONPATH=/tmp/old python benchmarks/before_after.py runs/bench_learning-cpu/maze15/vin/kdefault/seed0/best.pt
    PYTHONPATH=. python benchmarks/before_after.py runs/bench_learning-cpu/maze15/vin/kdefault/seed0/best.pt

All test maps of each checkpoint's dataset; the step (forward, loss, backward on 32 training maps) is the median of 6
in thread time, one thread. Kept standalone (no imports of newer helpers) so that older trees can run it.
"""

import statistics
import sys
import time
import warnings

import torch

from idp_agents.imitate import RunConfig, load_or_generate_dataset, split_data
from idp_agents.implicit import FixedPointConfig
from idp_agents.planners import PLANNERS
from idp_agents.policy import PlannerPolicy
from idp_agents.training import evaluate_planner, imitation_loss


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    for path in sys.argv[1:]:
        trained = PlannerPolicy.load(path)
        run, name, planner = trained.config["run"], trained.config["planner"], trained.planner
        if hasattr(planner.fixed_point, "k_fwd_stragglers"):  # this tree's default for the planner
            default = PLANNERS[name].defaults.get("k_fwd_stragglers", FixedPointConfig().k_fwd_stragglers)
            planner.fixed_point.k_fwd_stragglers = default
        if hasattr(planner.fixed_point, "solver_stragglers"):
            planner.fixed_point.solver_stragglers = FixedPointConfig().solver_stragglers
        # the dataset it was trained on (benchmarks.trained.dataset_config, inlined: older trees lack it)
        dataset_fields = ("env", "size", "train", "val", "test", "seed", "data", "cache_dir")
        config = RunConfig(**{k: run[k] for k in dataset_fields if k in run})
        splits, _ = load_or_generate_dataset(config)
        test = split_data(splits["test"], None, torch.device("cpu"))
        with torch.no_grad():
            metrics = evaluate_planner(planner, test, 128)
            solves = [planner(test["maps"][i : i + 128]).info.forward for i in range(0, len(test["maps"]), 128)]
        residuals = "unrolled"
        if solves[0] is not None:
            r = torch.cat([s.final_residual for s in solves])
            residuals = (
                f"fwd residual mean {r.mean():.2e} max {r.max():.2e} above 1e-4 {100 * (r > 1e-4).float().mean():.2f}%"
            )
        train = split_data(splits["train"], None, torch.device("cpu"))
        times = []
        for b in range(6):
            rows = slice(32 * b, 32 * b + 32)
            start = time.thread_time()
            out = planner(train["maps"][rows])
            loss = imitation_loss(out.logits, train["optimal_actions"][rows])
            (loss if out.info.jac_loss is None else loss + out.info.jac_loss).backward()
            planner.zero_grad(set_to_none=True)
            times.append(time.thread_time() - start)
        print(f"{name} success {100 * metrics.success:.2f} {residuals} step {1e3 * statistics.median(times):.0f} ms")


if __name__ == "__main__":
    main()
