"""Checkpoints: written atomically, read with a clear error when a file is truncated or not ours."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import torch

from idp_envs.files import atomic_write

CHECKPOINT_FORMAT = "idp-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a readable IDP checkpoint."""


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Save ``payload`` (tensors, numbers, strings, lists and dicts of them) so that ``path`` is never partial."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}, buffer)
    with atomic_write(path) as f:
        f.write(buffer.getbuffer())
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint written by `save_checkpoint` (tensors and plain data only: no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} is truncated or not an IDP checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an IDP checkpoint")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')}, expected {CHECKPOINT_VERSION}")
    return payload
