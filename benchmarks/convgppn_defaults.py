"""ID-ConvGPPN's training step under its successive defaults, on the same trained weights (and its cell): forward
cap 80 with the Jacobian regulariser 0.1 on every sample; cap 200 with it at 5 on the samples whose solve missed the
tolerance; and today's, which adds the spectral-radius penalty (20 above 0.9); then today's with the forward cap
raised to 400 and the backward one from 50 to 200 (tried in training, not the default: docs/results.md).

For each setting: median milliseconds of one training step (forward solve, cross-entropy plus regulariser, backward
solve) over batches of 32 training maps, and the share of forward solves above tolerance, in one process:

    python -m benchmarks.convgppn_defaults runs/bench_learning-cpu/maze15/id-convgppn/kdefault/seed0/last.pt
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from benchmarks.trained import load_with_split, rebuilt
from idp_agents.implicit import NonConvergenceWarning
from idp_agents.training import planner_loss

SETTINGS = {
    "first (cap 80, Frobenius 0.1 everywhere)": {
        "k_fwd": 80,
        "k_bwd": 50,
        "jac_reg_weight": 0.1,
        "jac_reg_unconverged": None,
        "spectral_reg_weight": 0.0,
    },
    "second (cap 200, Frobenius 5 where unconverged)": {"k_fwd": 200, "k_bwd": 50, "spectral_reg_weight": 0.0},
    "today (second + spectral penalty 20 above 0.9)": {},
    "today with caps 400 forward, 200 backward": {"k_fwd": 400, "k_bwd": 200},
}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.convgppn_defaults", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--batches", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(1)
    trained, train = load_with_split(args.checkpoint)
    print("| setting | step ms (median) | forward solves above tolerance |\n|---|---|---|")
    for label, changes in SETTINGS.items():
        planner = rebuilt(trained, **changes)  # today's fixed-point defaults with these changes
        times, missed, solved = [], 0, 0
        for batch in range(args.batches):
            rows = slice(32 * batch, 32 * (batch + 1))
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NonConvergenceWarning)
                out = planner(train["maps"][rows])
                planner_loss(out, train["optimal_actions"][rows]).backward()
            times.append(1000 * (time.perf_counter() - start))
            missed += int((~out.info.forward.converged).sum())
            solved += out.info.forward.converged.numel()
        print(f"| {label} | {statistics.median(times):.0f} | {100 * missed / solved:.2f}% |")


if __name__ == "__main__":
    main()
