"""What ConvGPPN's LSTM cell costs against its GRU cell, in one process, configurations interleaved.

Per cell: one implicit and one unrolled training step (forward, squared-logit loss, backward; K = 30, backward 15
iterations, no tolerances, so both cells run the same iteration counts), and one no-grad step with the in-place
(fused) gate arithmetic and with the plain path. Medians over repeats, random weights, 15x15 maps:

    python -m benchmarks.convgppn_cells --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from idp_agents.planners import make_planner
from idp_agents.planners.fused import plain_steps

CELLS = ("gru", "lstm")
FIXED_POINT = {"k_fwd": 30, "tol_fwd": None, "k_bwd": 15, "tol_bwd": None}
NO_REGULARISERS = {"spectral_reg_weight": 0.0, "jac_reg_unconverged": None}


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return 1e3 * (time.perf_counter() - start)


def train_step(planner, maps) -> None:
    planner(maps).logits.square().mean().backward()


def no_grad_steps(step, ctx, z, repeats: int = 30) -> None:
    with torch.no_grad():
        for _ in range(repeats):
            step(z, ctx)


def plain_no_grad_steps(step, ctx, z) -> None:
    with plain_steps(step):
        no_grad_steps(step, ctx, z)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.convgppn_cells", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=15)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    maps = torch.zeros(args.batch, 2, args.size, args.size)
    maps[:, 0] = (torch.rand(args.batch, args.size, args.size) < 0.3).float()
    maps[:, 0, args.size // 2, args.size // 2] = 0.0
    maps[:, 1, args.size // 2, args.size // 2] = 1.0
    cases = {}
    for cell in CELLS:
        implicit = make_planner("id-convgppn", cell=cell, **FIXED_POINT, **NO_REGULARISERS)
        unrolled = make_planner("convgppn", cell=cell, k_fwd=FIXED_POINT["k_fwd"])
        with torch.no_grad():
            ctx = implicit.step.encode(maps)
            z = (torch.rand_like(implicit.step.initial_state(ctx)) * 2 - 1).clamp(-1, 1)
        cases[f"implicit train step, {cell}"] = (train_step, implicit, maps)
        cases[f"unrolled train step, {cell}"] = (train_step, unrolled, maps)
        cases[f"no-grad step x30, fused, {cell}"] = (no_grad_steps, implicit.step, ctx, z)
        cases[f"no-grad step x30, plain, {cell}"] = (plain_no_grad_steps, implicit.step, ctx, z)
    times = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, (fn, *fn_args) in cases.items():
            times[name].append(timed(fn, *fn_args))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"batch {args.batch}, {args.size}x{args.size}, {torch.get_num_threads()} thread(s), medians of {args.repeats}"
    )
    for name, ms in medians.items():
        print(f"  {name:36s} {ms:9.1f} ms")
    for kind in ("implicit train step", "unrolled train step", "no-grad step x30, fused"):
        print(f"  {kind}: lstm / gru = {medians[f'{kind}, lstm'] / medians[f'{kind}, gru']:.2f}")
    fused_gain = medians["no-grad step x30, plain, lstm"] / medians["no-grad step x30, fused, lstm"]
    print(f"  lstm no-grad step: plain / fused = {fused_gain:.2f}")


if __name__ == "__main__":
    main()
