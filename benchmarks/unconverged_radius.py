"""Which maps an implicit planner's forward solve fails on: the step's spectral radius at its fixed point on the
training maps whose solve (the checkpoint's own settings) ended above tolerance, against maps that converged.

For a checkpoint: ``--batches`` batches of 32 training maps of its dataset, solved without gradients as in training;
then ``Planner.spectral_radius`` (power iteration on J^T at an Anderson fixed point of ``--solve-iterations``) on
every unconverged map and on as many converged ones (at least 16)::

    python -m benchmarks.unconverged_radius runs/bench_learning-cpu/maze15/id-convgppn/kdefault/seed0/last.pt
"""

from __future__ import annotations

import argparse
import warnings

import torch

from benchmarks.trained import load_with_split, rebuilt
from idp_agents.implicit import NonConvergenceWarning


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.unconverged_radius", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--batches", type=int, default=8, help="batches of 32 training maps to solve")
    p.add_argument("--solve-iterations", type=int, default=400, help="Anderson budget of the radius's fixed point")
    args = p.parse_args()
    if args.batches < 1 or args.solve_iterations < 1:
        p.error("--batches and --solve-iterations must be at least 1")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", NonConvergenceWarning)
    trained, train = load_with_split(args.checkpoint)
    planner = rebuilt(trained)
    tol = planner.fixed_point.tol_fwd
    if planner.fixed_point.mode != "implicit" or tol is None:
        p.error("the checkpoint must be an implicit planner with a forward tolerance")
    maps = train["maps"][: 32 * args.batches]
    with torch.no_grad():
        residuals = torch.cat([planner(maps[i : i + 32]).info.forward.final_residual for i in range(0, len(maps), 32)])
    missed = torch.nonzero(residuals > tol).flatten()
    converged = torch.nonzero(residuals <= tol).flatten()[: max(16, len(missed))]
    cap = planner.fixed_point.k_fwd
    print(f"{len(missed)} of {len(maps)} training maps ended above the tolerance {tol:g} (cap {cap})")
    for name, index in (("above tolerance", missed), ("converged", converged)):
        if len(index) == 0:
            continue
        rho = planner.spectral_radius(maps[index], solve_iterations=args.solve_iterations)
        print(
            f"{name}: spectral radius min {rho.min():.3f}, median {rho.median():.3f}, max {rho.max():.3f}; "
            f"at least 1 on {(rho >= 1).sum().item()} of {len(index)}; final residuals "
            f"{', '.join(f'{r:.1e}' for r in residuals[index].tolist()[:12])}"
        )


if __name__ == "__main__":
    main()
