"""Which solver should continue the stragglers: on a checkpoint's training maps, how many forward solves end above
tolerance when the samples left above it at the cap are continued by Anderson, and by the plain iteration.

Every training map of the checkpoint's dataset, in batches of 32, solved without gradients as in training, with
today's fixed-point defaults for the checkpoint's planner but ``solver_stragglers``; thread time of each pass, one
thread::

    python -m benchmarks.straggler_solvers runs/stragglers-anderson/maze15/id-convgppn/seed2/last.pt
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from benchmarks.trained import load_with_split, rebuilt
from idp_agents.implicit import NonConvergenceWarning
from idp_agents.solvers import SOLVERS


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.straggler_solvers", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--solvers", nargs="+", choices=sorted(SOLVERS), default=["anderson", "forward"])
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", NonConvergenceWarning)
    for path in args.checkpoints:
        trained, train = load_with_split(path)
        planner, maps = rebuilt(trained), train["maps"]
        if planner.fixed_point.mode != "implicit":
            p.error(f"{path} holds an unrolled planner ({trained.config['planner']}): it has no fixed-point solve")
        for solver in args.solvers:
            planner.fixed_point.solver_stragglers = solver
            start = time.thread_time()
            with torch.no_grad():
                final = torch.cat(
                    [planner(maps[i : i + 32]).info.forward.final_residual for i in range(0, len(maps), 32)]
                )
            above, tol = int((final > planner.fixed_point.tol_fwd).sum()), planner.fixed_point.tol_fwd
            print(
                f"{path}: stragglers by {solver}: {above} of {len(maps)} training maps above {tol:g} "
                f"({100 * above / len(maps):.2f}%), largest residual {final.max():.1e}, "
                f"{time.thread_time() - start:.0f} s thread time"
            )


if __name__ == "__main__":
    main()
