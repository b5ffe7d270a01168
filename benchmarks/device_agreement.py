"""Do the planners compute the same thing on an accelerator as on the CPU? One training step and one no-grad pass.

For each planner (the six, with ``make_planner``'s defaults, on the plane; ID-SymVIN also on the torus), the same
weights on the CPU and on ``--device``: the imitation loss (with the planner's own regularisers) and its gradient in
training mode, and the logits in eval mode under ``torch.no_grad()`` (the fused kernels' path, compiled on CUDA by
default). TF32 is switched off, so both sides compute in float32 and differ by rounding and by where a solver's
tolerance check stops; a wrong kernel differs by far more. Prints the largest relative differences and exits
non-zero when one exceeds its bound::

    python -m benchmarks.device_agreement --device cuda
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch

from benchmarks.bench_planners import random_maps
from idp_agents.planners import make_planner
from idp_agents.training import planner_loss

CASES = (
    ("vin", "plane"),
    ("id-vin", "plane"),
    ("convgppn", "plane"),
    ("id-convgppn", "plane"),
    ("symvin", "plane"),
    ("id-symvin", "plane"),
    ("id-symvin", "torus"),
)
BOUNDS = {"logits": 1e-3, "gradient": 1e-2}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, both moved to the CPU in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def training_step(planner, maps: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits and the flattened gradient of imitate's loss (imitation + the planner's regularisers)."""
    planner.train()
    planner.zero_grad(set_to_none=True)
    output = planner(maps)
    planner_loss(output, labels).backward()
    grads = [p.grad.flatten() for p in planner.parameters() if p.grad is not None]
    return output.logits.detach(), torch.cat(grads)


def no_grad_logits(planner, maps: torch.Tensor) -> torch.Tensor:
    planner.eval()
    with torch.no_grad():
        return planner(maps).logits


def compare(name: str, topology: str, device: torch.device, size: int, batch: int) -> dict:
    torch.manual_seed(0)
    cpu = make_planner(name, topology=topology)
    other = copy.deepcopy(cpu).to(device)
    maps, _ = random_maps(batch, size, torch.Generator().manual_seed(0))
    # random optimal-action sets (B, 4, H, W), none inside obstacles, as in the datasets
    labels = torch.rand(batch, 4, size, size, generator=torch.Generator().manual_seed(1)) < 0.4
    labels &= maps[:, :1] == 0
    logits_cpu, grad_cpu = training_step(cpu, maps, labels)
    logits_dev, grad_dev = training_step(other, maps.to(device), labels.to(device))
    return {
        "planner": name,
        "topology": topology,
        "logits": relative(logits_dev, logits_cpu),
        "gradient": relative(grad_dev, grad_cpu),
        "no-grad logits": relative(no_grad_logits(other, maps.to(device)), no_grad_logits(cpu, maps)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.device_agreement", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", type=int, default=15)
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    print(f"{device} against cpu, {args.batch} random {args.size}x{args.size} maps; relative L2 differences")
    print(f"{'planner':<12} {'topology':<8} {'logits':>10} {'gradient':>10} {'no-grad logits':>15}")
    failed = []
    for name, topology in CASES:
        row = compare(name, topology, device, args.size, args.batch)
        print(
            f"{name:<12} {topology:<8} {row['logits']:>10.2e} {row['gradient']:>10.2e} {row['no-grad logits']:>15.2e}"
        )
        bounds = {"logits": BOUNDS["logits"], "gradient": BOUNDS["gradient"], "no-grad logits": BOUNDS["logits"]}
        failed += [f"{name} ({topology}) {key}" for key, bound in bounds.items() if not row[key] <= bound]
    if failed:
        print("DISAGREE beyond the bounds " + str(BOUNDS) + ": " + ", ".join(failed))
        return 1
    print(f"all within the bounds {BOUNDS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
