"""Where does an implicit planner's gap to its unrolled twin come from: the forward pass, or training?

For each checkpoint given (typically the unrolled and the implicit twin of one seed), on its own weights:

- closed-loop test %Success / %Optimal with each forward pass: K unrolled steps (the unrolled twin's pass), 2K, and
  the fixed point solved to 1e-6 (the implicit twin's pass, tighter): if a checkpoint is better whichever pass
  reads it, the difference between the twins is in their weights, not in how they plan;
- the gradient of the training loss on training batches by the implicit solve and by K unrolled steps, each
  against the gradient of a long unroll (the fixed point's loss differentiated the long way): cosine and norm ratio.
  The implicit one should agree to the digits shown; the K-step one is what the unrolled twin trains with.

    python -m benchmarks.twin_gap runs/bench_learning-cpu/maze15/{vin,id-vin}/kdefault/seed5/best.pt

One thread; all of each checkpoint's test maps; four training batches of 32 maps (the same for every checkpoint of
one dataset).
"""

from __future__ import annotations

import argparse
import dataclasses
import warnings

import torch
from torch import Tensor

from benchmarks.trained import load_with_splits
from idp_agents.planners import Planner
from idp_agents.training import evaluate_planner, planner_loss


def forward_passes(k: int) -> dict[str, dict]:
    """The fixed-point settings of each forward pass compared, by label."""
    return {
        f"{k} unrolled steps": dict(mode="unrolled", k_fwd=k),
        f"{2 * k} unrolled steps": dict(mode="unrolled", k_fwd=2 * k),
        "fixed point to 1e-6": dict(mode="implicit", k_fwd=k, tol_fwd=1e-6, k_fwd_stragglers=2000),
    }


def loss_gradient(planner: Planner, maps: Tensor, optimal: Tensor, **fixed_point) -> Tensor:
    """The training loss's gradient, flattened over the parameters, with the planner's solve set by ``fixed_point``
    (its settings restored after)."""
    saved = planner.fixed_point
    planner.fixed_point = dataclasses.replace(saved, **fixed_point)
    try:
        planner.zero_grad(set_to_none=True)
        planner_loss(planner(maps), optimal).backward()
        grads = [p.grad.flatten() for p in planner.parameters() if p.grad is not None]
    finally:
        planner.fixed_point = saved
        planner.zero_grad(set_to_none=True)
    return torch.cat(grads)


def gradient_agreement(planner: Planner, batches: list[tuple[Tensor, Tensor]], k: int, long_k: int) -> dict[str, tuple]:
    """(cosine, norm ratio) of the implicit and the K-step gradients, summed over ``batches`` of (maps, optimal
    actions), against the ``long_k``-step unrolled one."""
    settings = {"implicit": dict(mode="implicit"), f"{k} steps": dict(mode="unrolled", k_fwd=k)}
    reference = sum(loss_gradient(planner, m, o, mode="unrolled", k_fwd=long_k) for m, o in batches)
    out = {}
    for label, fixed_point in settings.items():
        gradient = sum(loss_gradient(planner, m, o, **fixed_point) for m, o in batches)
        cosine = torch.nn.functional.cosine_similarity(gradient, reference, dim=0)
        out[label] = (float(cosine), float(gradient.norm() / reference.norm()))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--k", type=int, default=30, help="the unrolled twin's number of steps")
    parser.add_argument("--long-k", type=int, default=400, help="unrolled steps of the reference gradient")
    parser.add_argument("--batches", type=int, default=4, help="training batches of 32 maps for the gradients")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    for path in args.checkpoints:
        trained, (test, train) = load_with_splits(path, ("test", "train"))
        planner, base = trained.planner, trained.planner.fixed_point
        passes = []
        for label, fixed_point in forward_passes(args.k).items():
            planner.fixed_point = dataclasses.replace(base, **fixed_point)
            with torch.no_grad():
                m = evaluate_planner(planner, test, 128)
            passes.append(f"{label} {100 * m.success:.2f} / {100 * m.optimal:.2f}")
        planner.fixed_point = base
        order = torch.randperm(len(train["maps"]), generator=torch.Generator().manual_seed(0))
        rows = [order[32 * b : 32 * b + 32] for b in range(args.batches)]
        batches = [(train["maps"][r], train["optimal_actions"][r]) for r in rows]
        agreement = gradient_agreement(planner, batches, args.k, args.long_k)
        grads = ", ".join(f"{label} cos {c:.4f} norm {n:.3f}" for label, (c, n) in agreement.items())
        print(f"{path}\n  test %Success / %Optimal: {'; '.join(passes)}\n  gradient vs {args.long_k} steps: {grads}")


if __name__ == "__main__":
    main()
