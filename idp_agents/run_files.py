"""A training run's files: the checks on ``--out`` before any work, metrics.csv and TensorBoard, the console lines
of an epoch and of the test report, and the random generators' state a checkpoint carries so a resumed run draws
what the uninterrupted run would have."""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from idp_envs.files import atomic_write


def prepare_out_dir(out: Path) -> None:
    """Create ``--out`` and check that files can be written in it, before any data is made or any epoch trained."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory for the run's checkpoints and reports")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / ".write-test") as f:
            f.write(b"ok")
        (out / ".write-test").unlink()
    except OSError as exc:
        raise ValueError(f"--out {out} is not writable ({exc.strerror or exc}); choose another --out") from exc


def check_free_space(out: Path, modules: list[torch.nn.Module]) -> None:
    """Refuse to train when ``--out``'s disk cannot hold the run's files: best.pt and last.pt (weights and RMSprop
    state), the temporary copy an atomic write makes, and a margin for logs and the report."""
    params = sum(p.numel() * p.element_size() for m in modules for p in m.parameters())
    needed = 3 * (2 * params + 2**20) + 16 * 2**20
    free = shutil.disk_usage(out).free
    if free < needed:
        raise ValueError(
            f"--out {out}: {free / 2**20:.0f} MiB free on its disk, the run writes about {needed / 2**20:.0f} MiB; "
            "free some space or choose another --out"
        )


def rng_state() -> dict:
    """Every random generator a run draws from, as plain data a weights-only checkpoint can hold."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": json.dumps([keys.tolist(), int(position), int(has_gauss), float(gauss)]),
        "python": json.dumps([version, list(internal), gauss_next]),
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    keys, position, has_gauss, gauss = json.loads(state["numpy"])
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss_next))


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    # every epoch's columns in order of appearance: a run resumed under a newer version may log more of them
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(key for row in history for key in row)))
    writer.writeheader()
    writer.writerows(history)
    with atomic_write(path) as f:
        f.write(buffer.getvalue().encode())


def tensorboard_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def fixed_point_line(row: dict) -> str:
    """The epoch's fixed-point diagnostics in one line."""
    solves = "unrolled: no solves"
    if not np.isnan(row["fwd_residual_mean"]):
        at_cap = "" if np.isnan(row["fwd_over_cap"]) else f", {100 * row['fwd_over_cap']:.1f}% at the cap"
        solves = (
            f"forward residual mean {row['fwd_residual_mean']:.1e} max {row['fwd_residual_max']:.1e} "
            f"({100 * row['fwd_nonconverged']:.1f}% above tol{at_cap})"
        )
        if not np.isnan(row["bwd_residual_mean"]):
            solves += (
                f"  backward mean {row['bwd_residual_mean']:.1e} max {row['bwd_residual_max']:.1e} "
                f"({100 * row['bwd_nonconverged']:.1f}% above tol)"
            )
    return f"{solves}  spectral radius mean {row['spectral_radius_mean']:.3f} max {row['spectral_radius_max']:.3f}"


def print_report(report: dict) -> None:
    t = report["test"]
    rows = [
        ("env", report["env"] + "".join(f" ({k} {v})" for k, v in report.get("env_kwargs", {}).items())),
        ("planner", report["planner"]),
        ("best epoch", report["best_epoch"]),
        ("test %Success", f"{100 * t['success']:.1f}"),
        ("test %Optimal", f"{100 * t['optimal']:.1f}"),
        ("test SPL", f"{t['spl']:.3f}"),
        ("start cells", f"{t['starts']} (reachable, all {t['maps']} test maps)"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
