"""The one way this package writes a result file: a temporary file beside it, then a rename.

A reader never sees half a file, a crash (even SIGKILL) leaves the previous version in place, and
parallel writers (joblib sweep jobs rewriting one report) never share a temporary file: each gets
its own unique name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["atomic_open", "cache_root", "sha256", "write_atomic", "write_png"]


@contextlib.contextmanager
def atomic_open(
    path: str | Path, mode: str = "w", before_rename: Callable[[Path], None] | None = None
) -> Iterator[IO]:
    """Open a unique temporary file in ``path``'s folder (``mode`` ``"w"`` or ``"wb"``); on success
    flush, fsync and rename it onto ``path``: the same filesystem, so the rename is atomic. On an
    error ``path`` stays as it was. ``before_rename`` is given the complete temporary file (a
    checksum is recorded before the file takes its name).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode={mode!r}; expected 'w' or 'wb'")
    path = Path(path)
    fd, partial = _create_beside(path)
    try:
        with os.fdopen(fd, mode) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        if before_rename is not None:
            before_rename(Path(partial))
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise


def _create_beside(path: Path) -> tuple[int, str]:
    """A new file of a unique name in ``path``'s folder, created as ``open()`` creates files (mode
    0666 less the process's umask as it is now: a result file others may read), never through a
    link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    while True:  # a name taken by a parallel writer: draw another
        partial = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.partial")
        with contextlib.suppress(FileExistsError):
            return os.open(partial, flags, 0o666), partial


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text or bytes) to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w") as file:
        file.write(data)


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write an ``(H, W)`` label or ``(H, W, 3)`` uint8 RGB array as a PNG, atomically."""
    import cv2  # here: the run record writes through this module and loads no OpenCV
    import numpy as np

    if array.ndim == 3:
        array = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"could not encode {path} as PNG (array {array.shape} {array.dtype})")
    write_atomic(path, encoded.tobytes())


def cache_root() -> Path:
    """This package's cache: ``$SEGMENT_CACHE_DIR``, else ``$XDG_CACHE_HOME/segment``
    (``~/.cache/segment``)."""
    root = os.environ.get("SEGMENT_CACHE_DIR")
    return (
        Path(root)
        if root
        else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "segment"
    )


def sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
