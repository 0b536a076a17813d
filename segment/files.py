"""The one way this package writes a result file: a temporary file beside it, then a rename.

A reader never sees half a file, a crash (even SIGKILL) leaves the previous version in place, and
parallel writers (joblib sweep jobs rewriting one report) never share a temporary file: each gets
its own unique name from :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["atomic_open", "cache_root", "sha256", "write_atomic", "write_png"]

# The process's umask (read once: os.umask can only be read by setting it). mkstemp creates
# files as 0600; a result file is given the mode open() would give it, as others can read.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


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
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
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
