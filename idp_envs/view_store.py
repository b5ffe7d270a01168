"""The on-disk store of a visual dataset's views: free cells only, each map compressed apart, read lazily.

A dataset ``mazes.npz`` of VisualMaze tasks keeps its views in ``mazes.views/``:

    views.json           format version, view size, codec, and per split the fingerprint of its maps and goals
    <split>.views        each map's views, compressed with Zstandard one map at a time, one after another
    <split>.index.npy    (N, 2) int64: each map's byte offset and length in <split>.views; -1 while not rendered

Obstacle cells see nothing (their views are black by construction), so a map stores the views of its free cells
alone, row-major, (F, 4, S, S, 3) uint8 before compression; the occupancy of the dataset puts them back. 1,000
15x15 mazes take about 0.35 GB where the uncompressed views of every cell took 2.6 GB, and a map decodes in a few
milliseconds. `ViewStore` reads like the (N, H, W, 4, S, S, 3) array it replaces: an integer or an index array
reads those maps from disk, a slice gives a lazy store of those rows.

Rendering (`render_dataset_views`) runs in worker processes that return compressed maps to this one, which appends
them and records each in the index only once it is on disk: an interrupted run resumes with the maps it lacks,
and bytes after the last recorded map are cut off. Stores of the earlier format (one uncompressed ``<split>.npy``)
are refused with the command that converts them (`convert_store`).
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
from pathlib import Path

import numpy as np

from idp_envs.dataset_files import DatasetError, read_dataset
from idp_envs.files import atomic_write
from idp_envs.maze_scene import DIRECTIONS
from idp_envs.views import VIEW_SIZE, shared_renderer

STORE_VERSION = 2
CODEC = "zstd"
LEVEL = 3  # measured on 15x15 mazes: level 3 stores 0.35 GB per 1,000 maps, level 9 0.31 GB at 5x the encoding time


def views_dir(dataset_path: str | os.PathLike) -> Path:
    """Where the views of a dataset file live: ``mazes.npz`` -> ``mazes.views/``."""
    path = Path(dataset_path)
    return path.with_name(f"{path.stem}.views")


def layout_fingerprint(occupancy: np.ndarray, goal: np.ndarray) -> str:
    """A digest of the maps and goals a store was rendered for, to refuse resuming into another dataset."""
    digest = hashlib.sha256(np.ascontiguousarray(occupancy, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(goal, dtype=np.int64).tobytes())
    return digest.hexdigest()


def encode_map(views: np.ndarray, occupancy: np.ndarray) -> bytes:
    """One map's (H, W, 4, S, S, 3) views as stored: its free cells' views, row-major, compressed."""
    import zstandard

    free = np.ascontiguousarray(views[np.asarray(occupancy) == 0])
    return zstandard.ZstdCompressor(level=LEVEL, write_checksum=True).compress(free.tobytes())  # damage is caught


class ViewStore:
    """The (N, H, W, 4, S, S, 3) uint8 views of a dataset split, read from its store map by map.

    ``store[i]`` is map i's views, ``store[index_array]`` a batch of them (both numpy arrays, read from disk),
    ``store[a:b]`` a lazy store of those maps, ``np.asarray(store)`` all of them. Pickles without its open file.
    """

    def __init__(self, blob: Path, index: np.ndarray, occupancy: np.ndarray, view_size: int = VIEW_SIZE):
        self.blob, self.index = Path(blob), np.asarray(index, dtype=np.int64)
        self.occupancy = np.asarray(occupancy)
        self.view_size = int(view_size)
        s = self.view_size
        self.shape = (len(self.index), *self.occupancy.shape[1:], DIRECTIONS, s, s, 3)
        self.dtype, self.ndim = np.dtype(np.uint8), len(self.shape)
        self._file = None
        self._decompressor = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, slice):
            return ViewStore(self.blob, self.index[key], self.occupancy[key], self.view_size)
        if isinstance(key, (int, np.integer)):
            return self._read(int(key))
        rows = np.arange(len(self))[np.asarray(key)]
        if rows.ndim != 1:
            raise IndexError(f"a view store is indexed by an int, a slice or a 1-D index array, got {key!r}")
        out = np.empty((len(rows), *self.shape[1:]), dtype=np.uint8)
        for j, i in enumerate(rows.tolist()):
            self._read(i, out[j])
        return out

    def __array__(self, dtype=None, copy=None):
        views = self[np.arange(len(self))]
        return views if dtype is None else views.astype(dtype)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"] = state["_decompressor"] = None  # each process opens its own
        return state

    def _read(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """Map ``i``'s views, decoded into ``out`` (zeroed first) or a new array."""
        import zstandard

        if not -len(self) <= i < len(self):
            raise IndexError(f"map {i} is outside a store of {len(self)} maps")
        offset, length = (int(x) for x in self.index[i])
        if length < 0:
            raise IndexError(f"map {i} of {self.blob} has not been rendered")
        if self._file is None:
            self._file = open(self.blob, "rb")  # kept open for the store's life
            self._decompressor = zstandard.ZstdDecompressor()
        data = os.pread(self._file.fileno(), length, offset)
        if len(data) != length:
            raise DatasetError(f"{self.blob} is truncated: map {i} needs bytes {offset}..{offset + length}")
        free = self.occupancy[i] == 0
        s = self.view_size
        expected = int(free.sum()) * DIRECTIONS * s * s * 3
        try:
            raw = self._decompressor.decompress(data, max_output_size=expected)
        except zstandard.ZstdError as exc:
            raw = exc
        if isinstance(raw, Exception) or len(raw) != expected:
            found = f"({raw})" if isinstance(raw, Exception) else f"{len(raw)} bytes for {expected}"
            raise DatasetError(
                f"{self.blob}: map {i} is corrupt {found}; delete {self.blob.parent} and rerun to render the views"
            )
        cells = np.frombuffer(raw, dtype=np.uint8).reshape(-1, DIRECTIONS, s, s, 3)
        out = np.empty(self.shape[1:], dtype=np.uint8) if out is None else out
        out[...] = 0
        out[free] = cells
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _paths(folder: Path, split: str) -> tuple[Path, Path]:
    return folder / f"{split}.views", folder / f"{split}.index.npy"


def _check_format(folder: Path, meta: dict, dataset_path) -> None:
    """Refuse a store of the earlier format (uncompressed ``<split>.npy``), naming the ways out."""
    old = meta.get("format_version") == 1 or (not meta and any(folder.glob("*.done.npy")))
    if old:
        raise DatasetError(
            f"{folder} holds views in the earlier, uncompressed format (version 1); convert it in place with "
            f"`python -m idp_envs.view_store convert {dataset_path}` (no rendering), or delete {folder} and rerun to "
            "render the views again"
        )


def _read_meta(folder: Path) -> dict:
    path = folder / "views.json"
    return json.loads(path.read_text()) if path.is_file() else {}


class _SplitWriter:
    """Appends encoded maps to one split's store and records each in its index once it is on disk."""

    def __init__(self, folder: Path, split: str, batch, meta: dict):
        self.blob, self.index_path = _paths(folder, split)
        fingerprint = layout_fingerprint(batch.occupancy, batch.goal)
        previous = meta.get("splits", {}).get(split, {})
        index = np.load(self.index_path) if self.index_path.is_file() and self.blob.is_file() else None
        if previous.get("fingerprint") != fingerprint or index is None or index.shape != (len(batch), 2):
            index = np.full((len(batch), 2), -1, dtype=np.int64)
            self.blob.write_bytes(b"")
            self._save(index)
        self.index = index
        done = index[:, 1] >= 0
        end = int((index[done, 0] + index[done, 1]).max(initial=0))
        with open(self.blob, "r+b") as f:
            f.truncate(end)  # bytes after the last recorded map belong to a write that did not finish
        meta.setdefault("splits", {})[split] = {"fingerprint": fingerprint, "maps": len(batch)}

    @property
    def missing(self) -> np.ndarray:
        return np.flatnonzero(self.index[:, 1] < 0)

    def append(self, rows, encoded: list[bytes]) -> None:
        with open(self.blob, "ab") as f:
            offset = f.tell()
            for i, data in zip(rows, encoded, strict=True):
                f.write(data)
                self.index[i] = (offset, len(data))
                offset += len(data)
            f.flush()
            os.fdatasync(f.fileno())  # on disk before the index says so
        self._save(self.index)

    def _save(self, index: np.ndarray) -> None:
        with atomic_write(self.index_path) as f:
            np.save(f, index)


def _render_chunk(job: tuple) -> tuple[str, np.ndarray, list[bytes]]:
    """Worker: render and encode the maps ``rows`` of a split."""
    split, rows, occupancy, goal, view_size = job
    renderer = shared_renderer(view_size)
    encoded = [encode_map(renderer.render(occ, tuple(g)), occ) for occ, g in zip(occupancy, goal, strict=True)]
    return split, rows, encoded


def render_dataset_views(
    dataset_path: str | os.PathLike,
    splits: dict,
    workers: int | None = None,
    view_size: int = VIEW_SIZE,
    chunk: int = 4,
    progress: bool = True,
) -> Path:
    """Render the views of every task of ``splits`` into ``views_dir(dataset_path)``; returns that folder.

    Worker processes (``workers``, default one per CPU; 0 renders in this process) render and compress ``chunk``
    maps at a time; this process appends them to the store, so peak memory stays that of a map per worker, and a
    rerun after an interruption renders only the maps the index lacks.
    """
    from tqdm.auto import tqdm

    folder = views_dir(dataset_path)
    folder.mkdir(parents=True, exist_ok=True)
    meta = _read_meta(folder)
    _check_format(folder, meta, dataset_path)
    if meta.get("view_size") not in (None, view_size):
        meta = {}
    meta.update(format_version=STORE_VERSION, view_size=view_size, directions="N,W,S,E", codec=CODEC, level=LEVEL)
    writers = {name: _SplitWriter(folder, name, batch, meta) for name, batch in splits.items()}
    with atomic_write(folder / "views.json") as f:
        f.write(json.dumps(meta, indent=1).encode())
    jobs = []
    for name, writer in writers.items():
        batch, missing = splits[name], writer.missing
        for rows in np.array_split(missing, math.ceil(len(missing) / chunk)) if len(missing) else []:
            jobs.append((name, rows, batch.occupancy[rows], batch.goal[rows], view_size))
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    todo = sum(len(job[1]) for job in jobs)
    with tqdm(total=todo, desc=f"views into {folder.name}", unit="map", disable=not progress) as bar:
        if workers == 0 or not jobs:
            results = map(_render_chunk, jobs)
            _store(results, writers, bar)
        else:
            context = multiprocessing.get_context("spawn")  # a forked OpenGL context is unusable
            with context.Pool(min(workers, len(jobs))) as pool:
                _store(pool.imap_unordered(_render_chunk, jobs), writers, bar)
    return folder


def _store(results, writers: dict, bar) -> None:
    for name, rows, encoded in results:
        writers[name].append(rows, encoded)
        bar.update(len(rows))


def load_views(dataset_path: str | os.PathLike, split: str, occupancy: np.ndarray) -> ViewStore:
    """The views of one split of a dataset whose maps are ``occupancy``, as a lazily read `ViewStore`."""
    folder = views_dir(dataset_path)
    meta = _read_meta(folder)
    _check_format(folder, meta, dataset_path)
    blob, index_path = _paths(folder, split)
    if not blob.is_file() or not index_path.is_file():
        raise DatasetError(f"{folder} has no views for split {split!r}")
    index = np.load(index_path)
    done = index[:, 1] >= 0
    if not done.all():
        raise DatasetError(
            f"{folder}: views of split {split!r} are incomplete ({int(done.sum())} of {len(done)} maps); rerun the "
            "dataset command with the same arguments to resume"
        )
    if len(index) != len(occupancy):
        raise DatasetError(f"{folder}: split {split!r} has {len(index)} maps of views for {len(occupancy)} tasks")
    if blob.stat().st_size < int((index[:, 0] + index[:, 1]).max(initial=0)):  # every map is done here
        raise DatasetError(f"{blob} is shorter than its index says: the store is corrupt; delete {folder} to render")
    return ViewStore(blob, index, occupancy, meta.get("view_size", VIEW_SIZE))


def attach_views(dataset_path: str | os.PathLike, splits: dict) -> None:
    """Give each split of a loaded dataset its lazily read ``views`` extra, when the dataset has a view store."""
    folder = views_dir(dataset_path)
    if not folder.is_dir():
        return
    meta = _read_meta(folder)
    _check_format(folder, meta, dataset_path)
    for name, batch in splits.items():
        expected = meta.get("splits", {}).get(name, {}).get("fingerprint")
        if expected != layout_fingerprint(batch.occupancy, batch.goal):
            raise DatasetError(f"{folder}: views of split {name!r} were rendered for other maps than {dataset_path}")
        batch.extras["views"] = load_views(dataset_path, name, batch.occupancy)


def convert_store(dataset_path: str | os.PathLike, progress: bool = True) -> Path:
    """Rewrite a store of the earlier format (uncompressed ``<split>.npy`` of every cell) in this one, in place:
    each split is encoded map by map into the new files, then the old ones are removed. No rendering."""
    from tqdm.auto import tqdm

    folder = views_dir(dataset_path)
    meta = _read_meta(folder)
    if meta.get("format_version") == STORE_VERSION:
        return folder
    if meta.get("format_version") not in (None, 1) or not any(folder.glob("*.done.npy")):
        raise DatasetError(f"{folder} is not a view store of the earlier format; nothing to convert")
    splits, _ = read_dataset(dataset_path)
    new_meta = {"format_version": STORE_VERSION, "view_size": meta.get("view_size", VIEW_SIZE)}
    new_meta.update(directions="N,W,S,E", codec=CODEC, level=LEVEL, splits={})
    for name, batch in splits.items():
        old_path, done_path = folder / f"{name}.npy", folder / f"{name}.done.npy"
        if not np.load(done_path).all():
            raise DatasetError(f"{folder}: views of split {name!r} are incomplete; render them first, then convert")
        old = np.load(old_path, mmap_mode="r")
        writer = _SplitWriter(folder, name, batch, new_meta)
        missing = writer.missing
        with tqdm(total=len(missing), desc=f"converting {name}", unit="map", disable=not progress) as bar:
            for rows in np.array_split(missing, math.ceil(len(missing) / 16)) if len(missing) else []:
                writer.append(rows, [encode_map(np.asarray(old[i]), batch.occupancy[i]) for i in rows])
                bar.update(len(rows))
    with atomic_write(folder / "views.json") as f:
        f.write(json.dumps(new_meta, indent=1).encode())
    for name in splits:
        for old_file in (folder / f"{name}.npy", folder / f"{name}.done.npy"):
            old_file.unlink(missing_ok=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m idp_envs.view_store", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="rewrite an earlier-format store (uncompressed .npy) in this format")
    convert.add_argument("dataset", help="the dataset file (mazes.npz) whose .views folder to convert")
    args = parser.parse_args(argv)
    try:
        folder = convert_store(args.dataset)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"converted {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
