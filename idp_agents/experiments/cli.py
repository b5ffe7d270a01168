"""``python -m idp_agents.experiments run|report CONFIG``."""

from __future__ import annotations

import argparse
import sys

import torch

from idp_agents.experiments.report import write_report
from idp_agents.experiments.runner import STATUSES, run_sweep
from idp_agents.experiments.sweeps import load_sweep


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m idp_agents.experiments", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("run", "report"))
    p.add_argument("config", help="a sweep config, e.g. experiments/nav2d.yaml")
    p.add_argument("--small", action="store_true", help="the config's small: form (a 2-core CPU in minutes)")
    p.add_argument("--out", help="sweep folder (default runs/experiments/NAME[-small])")
    p.add_argument(
        "--threads", type=int, help="torch CPU threads per run (imitate --threads) and for report-time timing"
    )
    p.add_argument("--device", help="imitate --device for every run, and the device of report-time timing")
    p.add_argument("--cache-dir", help="where generated datasets are cached (imitate --cache-dir)")
    p.add_argument("--in-process", action="store_true", help="run in this process instead of one subprocess each")
    p.add_argument("--jobs", type=int, default=None, help="runs at once, each a subprocess (default: one per device)")
    p.add_argument("--devices", nargs="+", help="CUDA device indices to spread runs over (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed or OOM")
    p.add_argument("--no-timing", dest="timing", action="store_false", help="report: skip the time-vs-K figure")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    for name in ("jobs", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SystemExit(f"error: --{name} must be at least 1, got {getattr(args, name)}")
    try:
        sweep = load_sweep(args.config, args.small, args.out)
        if args.command == "report":
            if args.threads:
                torch.set_num_threads(args.threads)
            print(write_report(sweep, args.timing, args.device or "auto"))
            return
        overrides = {k: getattr(args, k) for k in ("threads", "device", "cache_dir") if getattr(args, k) is not None}
        jobs = args.jobs or (len(args.devices) if args.devices else 1)
        statuses = run_sweep(sweep, overrides, args.in_process, jobs, args.devices, args.retry_failed)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    except KeyboardInterrupt:
        print(
            "error: interrupted; finished runs are kept and an interrupted run resumes from its last.pt: rerun the "
            "same command to continue",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    counts = {s: sum(v == s for v in statuses.values()) for s in STATUSES}
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n))
