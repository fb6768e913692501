"""Checkpoint files: written atomically, read without running code from the file."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import torch

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "fastscore-ncsn-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (truncated, foreign, newer) or written (full disk, read-only)."""


# Called with the name of each point a save passes ("written", "synced", "renamed"): a test kills the
# process there to prove that every moment of a save leaves a loadable checkpoint behind.
save_hook: Callable[[str], None] | None = None


def _reached(point: str) -> None:
    if save_hook is not None:
        save_hook(point)


def save_atomic(obj: Any, path: str) -> str:
    """torch.save to a temporary file beside `path`, fsync, then rename over it: a crash at any
    moment leaves either the old checkpoint or the new one, never a torn file. A failed write (a full
    disk, a read-only directory) leaves the old one too, and raises CheckpointError saying why."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}.tmp"
    tmp = os.path.join(directory, f"{prefix}{os.getpid()}")
    try:
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):  # what a save killed half-way left (one writer per run directory)
            if name.startswith(prefix):
                os.remove(os.path.join(directory, name))
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            _reached("written")
            os.fsync(f.fileno())
        _reached("synced")
        os.replace(tmp, path)
        _reached("renamed")
    except OSError as exc:
        raise CheckpointError(f"could not write the checkpoint {path}: {exc.strerror or exc}; the previous "
                              "checkpoint, if any, is unchanged") from exc
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)
    with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def checkpoint_path(path: str | os.PathLike[str]) -> str:
    """The checkpoint file of `path`: the file itself, or <path>/checkpoint.pt for a run directory."""
    path = os.fspath(path)
    return os.path.join(path, CHECKPOINT_NAME) if os.path.isdir(path) else path


def read_checkpoint_file(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """What a checkpoint file (or a run directory's checkpoint.pt) holds, loaded without running code
    from it; errors say what is wrong with the file. load_checkpoint checks it is fastscore's."""
    path = checkpoint_path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r} (train writes <workdir>/{CHECKPOINT_NAME})")
    try:
        # weights_only: a checkpoint holds tensors, numbers, strings and dicts only, so loading one
        # never runs code from the file.
        return torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except Exception as exc:  # torch raises RuntimeError, KeyError, UnpicklingError ... for a bad file
        first = str(exc).splitlines()[0] if isinstance(exc, RuntimeError) and str(exc) else ""
        raise CheckpointError(f"{path} is not a readable fastscore checkpoint (truncated, or another kind of "
                              f"file){': ' + first if first else ''}") from exc


def check_checkpoint(ckpt: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """ckpt itself if it is a fastscore checkpoint this version reads, else CheckpointError."""
    path = checkpoint_path(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fastscore checkpoint")
    if ckpt.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer fastscore (format {ckpt['version']})")
    return ckpt


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint written by Trainer (a file, or a run directory holding checkpoint.pt)."""
    return check_checkpoint(read_checkpoint_file(path, map_location), path)
