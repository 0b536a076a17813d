"""The one atomic writer: whole files only, under parallel writers too, nothing left behind."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from segment.files import atomic_open, write_atomic


def _writer(path: str, index: int, rounds: int) -> None:
    for _ in range(rounds):
        write_atomic(path, f"writer {index}\n" * 20_000)  # ~200 kB: a torn write would show


def test_parallel_writers_leave_one_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "report.md"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_writer, args=(str(path), i, 25)) for i in range(4)]
    for process in writers:
        process.start()
    seen = set()
    while any(process.is_alive() for process in writers):
        if path.exists():
            lines = set(path.read_text().splitlines())
            assert len(lines) == 1, (
                "a reader saw a mix of two writes"
            )  # never half of one, half of another
            seen |= lines
    for process in writers:
        process.join()
        assert process.exitcode == 0
    assert len(set(path.read_text().splitlines())) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # no temporary file left behind
    assert seen  # the reader did look while they wrote


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    write_atomic(path, "old")
    with pytest.raises(RuntimeError), atomic_open(path) as file:
        file.write("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    write_atomic(path, b"\x89PNG")
    assert path.read_bytes() == b"\x89PNG"


def test_a_result_file_takes_the_mode_of_the_umask_at_writing(tmp_path: Path) -> None:
    """As ``open()`` gives it: under the umask of the moment, not one the package read (and set)
    when it was imported."""
    before = os.umask(0o022)
    try:
        write_atomic(tmp_path / "shared.json", "{}")
        os.umask(0o077)
        write_atomic(tmp_path / "private.json", "{}")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "shared.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
