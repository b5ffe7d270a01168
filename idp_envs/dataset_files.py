"""A dataset's file: one compressed ``.npz`` with arrays ``<split>/<name>`` and a JSON ``metadata`` entry, written
atomically and read with a clear `DatasetError` for anything that is not a whole dataset of this format. Knows
nothing of views or of how datasets are made (`idp_envs.datasets`)."""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from idp_envs.files import atomic_write
from idp_envs.tasks import TaskBatch

FORMAT_VERSION = 1


class DatasetError(ValueError):
    """A file that is not a readable IDP dataset (truncated, foreign, or of another format version)."""


def save_dataset(path: str | os.PathLike, splits: dict[str, TaskBatch], metadata: dict) -> Path:
    """Write the splits to one compressed file, atomically: a crash never leaves a partial file at ``path``."""
    path = Path(path)
    arrays = {}
    for name, batch in splits.items():
        if "/" in name:
            raise ValueError(f"split names cannot contain '/', got {name!r}")
        for key in TaskBatch.ARRAYS:
            arrays[f"{name}/{key}"] = getattr(batch, key)
        for key, value in batch.extras.items():
            arrays[f"{name}/extras/{key}"] = value
    meta = dict(metadata, format_version=FORMAT_VERSION, splits=list(splits))
    meta.setdefault("topology", next(iter(splits.values())).topology if splits else "plane")
    arrays["metadata"] = np.array(json.dumps(meta))
    with atomic_write(path) as f:
        np.savez_compressed(f, **arrays)
    return path


READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, ValueError, json.JSONDecodeError)
REMAKE = "make the file again with python -m idp_envs.datasets (--from-gppn for GPPN data)"


def open_npz(path: Path, what: str):
    """``np.load`` of an ``.npz`` archive; `DatasetError` for anything else (a single ``.npy`` array, a pickle)."""
    try:
        data = np.load(path, allow_pickle=False)
    except READ_ERRORS as exc:
        raise DatasetError(f"{path} is truncated or not {what} ({exc}); {REMAKE}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DatasetError(f"{path} holds a single array (.npy), not {what} (an .npz archive); {REMAKE}")
    return data


def read_dataset(path: str | os.PathLike) -> tuple[dict[str, TaskBatch], dict]:
    """Read every split of a dataset file written by `save_dataset`; clear `DatasetError` on a bad file.

    Every split is checked (`TaskBatch.check`: shapes, dtypes, goals and starts on free cells of the map) and must
    have the shape of the metadata. Views (VisualMaze) are not read here: see `idp_envs.datasets.load_dataset`.
    """
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{path} is a directory; a dataset is one .npz file from python -m idp_envs.datasets")
    if not path.is_file():
        raise FileNotFoundError(f"no dataset file at {path}")
    what = "an IDP dataset (python -m idp_envs.datasets)"
    try:
        with open_npz(path, what) as data:
            if "metadata" not in data.files:
                raise DatasetError(f"{path} is not an IDP dataset (no metadata entry); for GPPN files use --from-gppn")
            meta = json.loads(str(data["metadata"]))
            if not isinstance(meta, dict):
                raise DatasetError(f"{path}: its metadata is not a JSON object, so it is not an IDP dataset; {REMAKE}")
            if meta.get("format_version") != FORMAT_VERSION:
                raise DatasetError(
                    f"{path} has dataset format version {meta.get('format_version')}, this library reads "
                    f"{FORMAT_VERSION}; {REMAKE}"
                )
            splits = {}
            for name in meta["splits"]:
                arrays = [data[f"{name}/{key}"] for key in TaskBatch.ARRAYS]
                prefix = f"{name}/extras/"
                extras = {k[len(prefix) :]: data[k] for k in data.files if k.startswith(prefix)}
                splits[name] = TaskBatch(*arrays, topology=meta["topology"], extras=extras)
    except DatasetError:
        raise
    except READ_ERRORS as exc:
        raise DatasetError(f"{path} is truncated, corrupt or not an IDP dataset ({exc}); {REMAKE}") from exc
    for name, batch in splits.items():
        n = len(batch)
        if any(len(getattr(batch, k)) != n for k in TaskBatch.ARRAYS):
            raise DatasetError(f"{path}: arrays of split {name!r} have different lengths; {REMAKE}")
        try:
            batch.check()
        except ValueError as exc:
            raise DatasetError(f"{path}: split {name!r}: {exc}; {REMAKE}") from exc
        if list(batch.occupancy.shape[1:]) != list(meta.get("shape", batch.occupancy.shape[1:])):
            raise DatasetError(
                f"{path}: split {name!r} has {batch.occupancy.shape[1:]} maps, its metadata says {meta['shape']}; "
                f"{REMAKE}"
            )
    return splits, meta


def check_dataset_fits_env(path, meta: dict, env) -> None:
    """`DatasetError` unless a loaded dataset's maps have the shape and topology of ``env`` (an unwrapped IDP env):
    a file made for another task (a plane maze for the arm's torus, 9x9 mazes for a 15x15 id) is not trained on."""
    shape, topology = tuple(meta.get("shape", ())), meta.get("topology")
    if topology != env.topology:
        raise DatasetError(
            f"{path} holds {topology} maps, but {env.spec.id if env.spec else type(env).__name__} plans on a "
            f"{env.topology}; use a dataset made for that environment"
        )
    if shape != tuple(env.shape):
        raise DatasetError(
            f"{path} holds {'x'.join(map(str, shape))} maps, but the environment's are "
            f"{'x'.join(map(str, env.shape))}; use a dataset of that size (or the --size it was made with)"
        )
