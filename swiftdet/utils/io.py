"""Files that are never half-written: write to a temp file beside the target, fsync, rename."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

__all__ = ["atomic_write", "atomic_torch_save"]


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(fileobj)`` on a temp file in the target's folder, then atomically replace ``path``.

    A crash, a full disk or a kill at any moment leaves either the old file or the new one, never a
    truncated mix: rename within one filesystem is atomic, and fsync makes the data durable first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file owner-only; give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, mode) as f:
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
    # Persist the rename itself (the directory entry).
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


# Below this much free space, a failed torch.save is taken for a full disk (see _map_torch_write_error).
_NEARLY_FULL_BYTES = 16 * 2**20


def _original_error(error: BaseException) -> BaseException | None:
    """The OSError or KeyboardInterrupt behind ``error`` (torch's zip writer keeps it as the context)."""
    seen: set[int] = set()
    cause = error.__cause__ or error.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, (OSError, KeyboardInterrupt)):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _nearly_full(fileobj: Any) -> bool:
    try:
        stat = os.fstatvfs(fileobj.fileno())
    except (OSError, AttributeError, ValueError):
        return False
    return stat.f_bavail * stat.f_frsize < _NEARLY_FULL_BYTES


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through :func:`atomic_write`.

    torch's zip writer turns a failed write of the file (a full disk) or a Ctrl-C during it into
    ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``; they are raised here as
    what they are, an OSError (ENOSPC) or KeyboardInterrupt, so callers can say what to do.
    """
    path = Path(path)

    def save(f: Any) -> None:
        try:
            torch.save(obj, f)
        except RuntimeError as error:
            original = _original_error(error)
            if isinstance(original, KeyboardInterrupt):
                raise KeyboardInterrupt() from error
            if isinstance(original, OSError):
                raise OSError(original.errno, original.strerror or str(original), str(path)) from error
            # No OSError kept (a torch build that drops it): judge by the free space, the temp file
            # still on disk. Only the writer's own failures are mapped; other RuntimeErrors stay.
            if "PytorchStreamWriter" in str(error) or "unexpected pos" in str(error):
                if _nearly_full(f):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from error
            raise

    return atomic_write(path, save)
