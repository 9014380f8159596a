"""Crash-safe files: atomic writes, and checkpoints that load without arbitrary unpickling.

Every file cltk writes (checkpoints, results, plots) goes through :func:`atomic_write`: the content is written to
a temporary file in the destination's directory, flushed and fsynced, then renamed over the destination with
``os.replace`` (atomic on POSIX), and the directory is fsynced. A crash at any point leaves either the previous
file or the new one, never a torn file.

Checkpoints are ``torch.save`` files loaded with ``torch.load(weights_only=True)``: tensors, numbers, strings and
containers of them only. A file that needs anything else to unpickle (for example a pickle that would call
``os.system``) is refused with :class:`CheckpointError`.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

__all__ = ["CheckpointError", "atomic_write", "atomic_write_bytes", "atomic_write_text", "save_checkpoint",
           "load_checkpoint", "latest_checkpoint", "checkpoint_name"]

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely (unsafe pickle, corrupt or truncated file)."""


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:   # e.g. a platform without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``os.umask`` can only be read by setting
    it, which another thread creating a file at that moment would see)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[io.BufferedWriter], None]) -> Path:
    """Create or replace ``path`` atomically; ``write(f)`` writes the content to the binary file object ``f``.
    The file keeps the permission bits of the file it replaces, and a new one gets those ``open`` would give it (0666
    less the umask), not the temporary file's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(state: dict, path: PathLike) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists, tuples, dicts) to ``path`` atomically."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`, never unpickling arbitrary objects.

    Raises:
        CheckpointError: the file is not a plain-data checkpoint (an unsafe pickle), or is corrupt/truncated.
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refusing to load {str(path)!r}: it is not a plain-data checkpoint (loading it "
                              f"would need arbitrary unpickling: {str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated: {e}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(state).__name__}, expected a dict")
    return state


_NAME = re.compile(r"^ckpt-(\d{6})-(\d{9})\.pt$")


def checkpoint_name(task: int, step: int) -> str:
    """File name of the checkpoint taken at (task, step); names sort in training order."""
    return f"ckpt-{task:06d}-{step:09d}.pt"


def latest_checkpoint(directory: PathLike) -> Optional[tuple[Path, dict]]:
    """The newest checkpoint in ``directory`` that loads, with its state; ``None`` if there is none.

    Unreadable files (for example left by a crash of a writer that did not use :func:`atomic_write`) are skipped;
    an unsafe pickle is never loaded (it is skipped like any other invalid file).
    """
    d = Path(directory)
    if not d.is_dir():
        return None
    for p in sorted((p for p in d.iterdir() if _NAME.match(p.name)), reverse=True):
        try:
            return p, load_checkpoint(p)
        except CheckpointError:
            continue
    return None
