"""Checkpoint files: written atomically, read without running code from the file."""
from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "fastscore-ncsn-checkpoint"
FORMAT_VERSION = 1


def save_atomic(obj: Any, path: str) -> str:
    """torch.save to a temporary file beside `path`, fsync, then rename over it: a crash at any
    moment leaves either the old checkpoint or the new one, never a torn file."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """A checkpoint written by Trainer (a file, or a run directory holding checkpoint.pt)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r} (train writes <workdir>/{CHECKPOINT_NAME})")
    # weights_only: a checkpoint holds tensors, numbers, strings and dicts only, so loading one never
    # runs code from the file.
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path!r} is not a fastscore checkpoint")
    if ckpt.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path!r} was written by a newer fastscore (format {ckpt['version']})")
    return ckpt
