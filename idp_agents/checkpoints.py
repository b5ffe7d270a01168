"""Checkpoints: written atomically with a checksum of their content, read with a clear error when a file is
truncated, corrupt or not ours."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import zipfile
from pathlib import Path

import torch

from idp_envs.files import atomic_write

CHECKPOINT_FORMAT = "idp-checkpoint"
CHECKPOINT_VERSION = 2  # 2: a SHA-256 of the content under "checksum"; 1 (no checksum) still loads
READABLE_VERSIONS = (1, 2)


class CheckpointError(ValueError):
    """A file that is not a readable IDP checkpoint."""


def content_digest(payload: dict) -> str:
    """SHA-256 over every key and value of ``payload`` but ``checksum``: tensors by dtype, shape and bytes, plain
    data by type and repr, dicts in key order; the same before saving and after loading."""
    digest = hashlib.sha256()

    def add(value) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu").contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}".encode())
            for key in sorted(value, key=repr):
                digest.update(f"K{key!r}".encode())
                add(value[key])
        elif isinstance(value, list | tuple):
            digest.update(f"L{len(value)}".encode())
            for item in value:
                add(item)
        else:
            digest.update(f"V{type(value).__name__}:{value!r}".encode())

    add({k: v for k, v in payload.items() if k != "checksum"})
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Save ``payload`` (tensors, numbers, strings, lists and dicts of them) so that ``path`` is never partial."""
    content = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    content["checksum"] = content_digest(content)
    buffer = io.BytesIO()
    torch.save(content, buffer)
    with atomic_write(path) as f:
        f.write(buffer.getbuffer())
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint written by `save_checkpoint` (tensors and plain data only: no code is unpickled) and check
    its content against the checksum saved with it."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file (best.pt or last.pt of a run)")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        # torch's own message suggests weights_only=False, which would run code from an untrusted file: not repeated
        raise CheckpointError(
            f"{path} is truncated, corrupt or not an IDP checkpoint ({type(exc).__name__} while reading it); "
            "use another checkpoint of the run or train again"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an IDP checkpoint (a file of python -m idp_agents.imitate)")
    if payload.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')}; this library reads {list(READABLE_VERSIONS)}"
        )
    if payload["version"] >= 2 and payload.get("checksum") != content_digest(payload):
        raise CheckpointError(
            f"{path} is corrupt: its content does not match the checksum saved with it (bytes changed on disk); "
            "use another checkpoint of the run or train again"
        )
    return payload
