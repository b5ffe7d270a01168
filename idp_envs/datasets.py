"""Datasets of labelled planning tasks: generate train/val/test splits, save and load them atomically, import
the published GPPN layout.

    python -m idp_envs.datasets --env IDP/GridMaze-15-v0 --train 10000 --val 2000 --test 2000 --out mazes15.npz
    python -m idp_envs.datasets --from-gppn gppn_maze15.npz --out mazes15.npz

A dataset is one compressed ``.npz`` file with arrays ``<split>/<name>`` (occupancy, goal, start, distances,
optimal_actions, and ``<split>/extras/<name>`` for raw observations) and a JSON ``metadata`` entry (env id,
shape, topology, seed, counts, format version). No map layout appears in two splits. Environments that observe
rendered views (IDP/VisualMaze-*) also get a view store beside the file (``mazes15.views/``, see
`idp_envs.view_store`), rendered by ``--workers`` processes, resumed by rerunning the command, and loaded lazily as
the ``views`` extra.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np

from idp_envs import grid, view_store, views
from idp_envs.dataset_files import (
    FORMAT_VERSION,
    READ_ERRORS,
    DatasetError,
    check_dataset_fits_env,
    open_npz,
    read_dataset,
    save_dataset,
)
from idp_envs.tasks import PEAK_BYTES_PER_CELL, STORED_BYTES_PER_CELL, TaskBatch, check_memory, label_tasks

# the file format's names are part of this module's interface: the datasets a user makes and loads are files
__all__ = [
    "FORMAT_VERSION",
    "DatasetError",
    "check_dataset_fits_env",
    "ensure_dataset",
    "generate_splits",
    "import_gppn",
    "layout_keys",
    "load_dataset",
    "read_dataset",
    "save_dataset",
]
SPLITS = ("train", "val", "test")
CHUNK_BYTES = 512 * 2**20  # memory for one batch of tasks being sampled and labelled


def layout_keys(occupancy: np.ndarray, goal: np.ndarray | None = None) -> np.ndarray:
    """One hashable key per map layout (and goal, when given): the cells packed to bytes, as one void scalar."""
    packed = np.packbits(occupancy.reshape(len(occupancy), -1).astype(bool), axis=1)
    if goal is not None:
        packed = np.concatenate([packed, np.asarray(goal, dtype=np.int64).view(np.uint8).reshape(len(goal), -1)], 1)
    packed = np.ascontiguousarray(packed)
    return packed.view(np.dtype((np.void, packed.shape[1]))).ravel()


def generate_splits(
    env_id: str,
    counts: dict[str, int],
    seed: int,
    env_kwargs: dict | None = None,
    chunk: int = 1000,
    progress: bool = True,
    max_chunks: int = 10_000,
) -> tuple[dict[str, TaskBatch], dict]:
    """Sample ``sum(counts)`` tasks with pairwise distinct layouts and cut them into the named splits.

    Tasks come from the environment's own batched sampler, so any registered id works. Returns the splits and
    their metadata.
    """
    from tqdm.auto import tqdm

    if any(int(n) < 0 for n in counts.values()) or sum(int(n) for n in counts.values()) == 0:
        raise ValueError(f"split sizes must be non-negative and not all zero, got {counts}")
    env = gym.make(env_id, **(env_kwargs or {})).unwrapped
    rng = np.random.default_rng(seed)
    total = sum(int(n) for n in counts.values())
    check_memory(total, env.shape, STORED_BYTES_PER_CELL, f"a dataset of {env_id}")
    chunk = max(1, min(chunk, CHUNK_BYTES // (PEAK_BYTES_PER_CELL * env.shape[0] * env.shape[1])))
    batches, seen = [], set()
    kept = 0
    with tqdm(total=total, desc=f"tasks for {env_id}", unit="task", disable=not progress) as bar:
        for _ in range(max_chunks):
            if kept >= total:
                break
            batch = env.sample_tasks(min(chunk, max(total - kept, 1) + 16), rng)
            keys = layout_keys(batch.occupancy, batch.goal if env.DISTINCT_BY == "task" else None)
            _, first = np.unique(keys, return_index=True)
            new = np.array([i for i in np.sort(first) if keys[i].tobytes() not in seen], dtype=np.int64)
            new = new[: total - kept]
            seen.update(keys[i].tobytes() for i in new)
            batches.append(batch.subset(new))
            kept += len(new)
            bar.update(len(new))
        else:
            raise ValueError(
                f"could only find {kept} distinct layouts for {env_id} after {max_chunks} batches; "
                f"ask for fewer than {total} tasks"
            )
    distinct_by = env.DISTINCT_BY
    env.close()
    # shuffled before cutting, so that layouts drawn often (and kept first) are not all in the first split
    everything = TaskBatch.concatenate(batches)
    everything = everything.subset(rng.permutation(len(everything)))
    splits, offset = {}, 0
    for name, n in counts.items():
        splits[name] = everything.subset(slice(offset, offset + int(n)))
        offset += int(n)
    metadata = {
        "env_id": env_id,
        "env_kwargs": env_kwargs or {},
        "shape": list(everything.occupancy.shape[1:]),
        "topology": everything.topology,
        "seed": seed,
        "counts": {k: int(v) for k, v in counts.items()},
        "distinct_by": distinct_by,
    }
    return splits, metadata


def load_dataset(path: str | os.PathLike) -> tuple[dict[str, TaskBatch], dict]:
    """Read a dataset file (`read_dataset`: every split checked, no views) and attach its view store (VisualMaze),
    when it has one, as the lazily read ``views`` extra."""
    splits, meta = read_dataset(path)
    view_store.attach_views(path, splits)
    return splits, meta


def ensure_dataset(
    path: str | os.PathLike,
    env_id: str,
    counts: dict[str, int],
    seed: int,
    env_kwargs: dict | None = None,
    *,
    regenerate: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, TaskBatch], dict]:
    """The dataset at ``path`` for ``env_id``: made first when the file is missing (or ``regenerate``), its splits
    generated and saved atomically; for an env that observes views, its view store rendered where it lacks maps (an
    interrupted render resumes) and attached. The file is read once, and checked to be one made for this env (its
    id and keyword arguments, the shape and topology of its maps): the one pipeline behind ``python -m
    idp_envs.datasets`` and the training command's dataset cache."""
    path, env_kwargs = Path(path), dict(env_kwargs or {})
    if regenerate or not path.exists():
        splits, meta = generate_splits(env_id, counts, seed, env_kwargs, progress=progress)
        save_dataset(path, splits, meta)
    splits, meta = read_dataset(path)
    if meta.get("env_id") and meta["env_id"] != env_id:
        raise DatasetError(f"dataset {path} was made for {meta['env_id']}, not {env_id}")
    if meta.get("env_id") and meta.get("env_kwargs", {}) != env_kwargs:
        raise DatasetError(f"dataset {path} was made with {meta.get('env_kwargs')}, not {env_kwargs} (--size)")
    env = gym.make(env_id, **env_kwargs)
    check_dataset_fits_env(path, meta, env.unwrapped)
    env.close()
    if views.env_renders_views(env_id):
        view_store.render_dataset_views(path, splits, workers=workers, progress=progress)  # only what is missing
        view_store.attach_views(path, splits)
    return splits, meta


def import_gppn(path: str | os.PathLike, seed: int = 0) -> tuple[dict[str, TaskBatch], dict]:
    """Read a dataset in the published GPPN layout and relabel it with this library's conventions.

    ``arr_0``..``arr_8`` hold (maze, goal map, one-hot optimal policy) for train, valid and test; mazes use
    1 = free, goal maps are (N, 1, H, W) and policies (N, 4, 1, H, W) in the action order N, W, S, E. Labels are
    recomputed by BFS and checked against the file's policy (a disagreement raises `DatasetError`: a different
    action order or orientation). GPPN stores no start cell: one is drawn per task with ``seed``.
    """
    rng = np.random.default_rng(seed)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GPPN dataset file at {path}")
    what = "a GPPN dataset (expected arrays arr_0..arr_8)"
    try:
        with open_npz(path, what) as data:
            raw = [data[f"arr_{i}"] for i in range(9)]
    except DatasetError:
        raise
    except READ_ERRORS as exc:
        raise DatasetError(f"{path} is truncated, corrupt or not {what}: {exc}") from exc
    splits = {}
    for k, name in enumerate(SPLITS):
        maze, goal_map, policy = raw[3 * k : 3 * k + 3]
        n = len(maze)
        if maze.ndim != 3 or goal_map.shape != (n, 1, *maze.shape[1:]) or policy.shape != (n, 4, 1, *maze.shape[1:]):
            raise DatasetError(
                f"{path}: split {name} has shapes maze {maze.shape}, goal {goal_map.shape}, policy {policy.shape}; "
                "expected (N, H, W), (N, 1, H, W), (N, 4, 1, H, W)"
            )
        occupancy = (np.asarray(maze) == 0).astype(np.uint8)
        try:
            goal = grid.goal_cells(goal_map[:, 0])
        except ValueError as exc:
            raise DatasetError(f"{path}: split {name}: {exc}") from exc
        if occupancy[np.arange(n), goal[:, 0], goal[:, 1]].any():
            raise DatasetError(f"{path}: split {name} has goals inside obstacles (is 1 = free in its mazes?)")
        distances = grid.bfs_distances(occupancy, goal)
        start = grid.sample_free_cells(distances > 0, rng)
        batch = label_tasks(occupancy, goal, start)
        theirs = policy[:, :, 0].astype(bool)
        labelled = theirs.sum(axis=1) == 1
        check = labelled & batch.optimal_actions.any(axis=1)
        chosen = theirs.argmax(axis=1)
        ours_ok = np.take_along_axis(batch.optimal_actions, chosen[:, None], axis=1)[:, 0]
        bad = int((check & ~ours_ok).sum())
        if bad:
            raise DatasetError(
                f"{path}: split {name}: the file's policy takes a non-shortest-path action at {bad} of "
                f"{int(check.sum())} cells; its action order is not N, W, S, E or its mazes use another convention"
            )
        splits[name] = batch
    shared = np.isin(layout_keys(splits["test"].occupancy), layout_keys(splits["train"].occupancy)).sum()
    if shared:
        warnings.warn(f"{path}: {shared} test mazes also appear in the training split", stacklevel=2)
    metadata = {
        "env_id": None,
        "source": f"gppn:{Path(path).name}",
        "shape": list(splits["train"].occupancy.shape[1:]),
        "topology": "plane",
        "seed": seed,
        "counts": {k: len(v) for k, v in splits.items()},
    }
    return splits, metadata


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m idp_envs.datasets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="IDP/GridMaze-15-v0", help="registered environment id")
    parser.add_argument("--size", type=int, help="map size, for ids that take one (IDP/GridMaze-v0, IDP/VisualMaze-v0)")
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--val", type=int, default=2000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output .npz path")
    parser.add_argument("--from-gppn", metavar="FILE", help="convert a dataset in the GPPN layout instead")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes rendering views (VisualMaze)")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    if not 0 <= args.seed < 2**32:
        parser.error(f"--seed must be between 0 and 2**32 - 1, got {args.seed}")
    try:
        run_command(args)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    except KeyboardInterrupt:
        print(
            "error: interrupted; no partial dataset file was written (a view store keeps what it rendered): rerun the "
            "command to make it",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    except OSError as exc:
        what = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise SystemExit(
            f"error: could not write {exc.filename or args.out}: {what}; nothing partial was left"
        ) from exc


def run_command(args: argparse.Namespace) -> None:
    from idp_envs import resolve_env_id, size_kwargs

    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a directory; give the dataset's file name, e.g. {args.out}/maze.npz")
    if args.from_gppn:
        splits, meta = import_gppn(args.from_gppn, seed=args.seed)
        path = save_dataset(args.out, splits, meta)
    else:
        env_id = resolve_env_id(args.env)
        counts = {"train": args.train, "val": args.val, "test": args.test}
        kwargs = size_kwargs(env_id, args.size)
        splits, meta = ensure_dataset(
            args.out, env_id, counts, args.seed, kwargs, regenerate=True, workers=args.workers
        )
        path = Path(args.out)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in splits.items())
    print(f"wrote {path} ({sizes}; {path.stat().st_size / 1e6:.1f} MB)")
    if "views" in next(iter(splits.values())).extras:
        print(f"wrote views to {view_store.views_dir(path)}")


if __name__ == "__main__":
    main()
