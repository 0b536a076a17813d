"""The run record is data: a wrong type or a damaged record is named by field and file and left
byte for byte as it is, every committed record still reads, every attempt is on record (skips
too), and reading a record loads no heavy library."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from segment.config.names import parse_overrides
from segment.run.decision import RunFolderError
from segment.run.record import RecordError, RunRecord, read_record, write_record
from tests.helpers import REPO

FAST = ["model=unet_lab", "trainer.max_epochs=1", "scheduler=constant"]

# run.json's content -> what the error names (after "<folder>/run.json: ")
DAMAGED = [
    (
        '{"status": 5}',
        r"status: 5 \(input should be 'new', 'running', 'completed', 'stopped', 'interrupted' or "
        r"'failed'\)",
    ),
    ('{"metrics": [1, 2]}', r"metrics: \[1, 2\] \(input should be a valid dictionary\)"),
    ('{"attempts": [5]}', r"attempts\[0\]: 5 \(input should be a valid dictionary"),  # schema 1
    ('{"schema": 2, "attempts": "x"}', r"attempts: 'x' \(input should be a valid list\)"),
    (
        '{"schema": 2, "attempts": [{"pid": "12", "outcome": "archived"}]}',
        r"attempts\[0\].pid: '12' \(input should be a valid integer\); "
        r"attempts\[0\].outcome: 'archived'",
    ),
]


@pytest.mark.parametrize(("content", "named"), DAMAGED)
def test_a_wrong_type_in_a_record_is_named_by_field_and_file(
    tmp_path: Path, content: str, named: str
) -> None:
    """``{"status": 5}`` and ``{"metrics": [1, 2]}`` used to read without error, a damaged schema-1
    record raised a bare TypeError."""
    (tmp_path / "run.json").write_text(content)
    path = re.escape(str(tmp_path / "run.json"))
    with pytest.raises(RecordError, match=rf"^{path}: {named}.*; move the file aside or fix it$"):
        read_record(tmp_path)


@pytest.mark.parametrize("content", [content for content, _ in DAMAGED])
def test_an_attempt_on_a_damaged_record_leaves_it_byte_for_byte(
    hydra_train, tmp_path: Path, content: str
) -> None:
    """A record whose attempts were not a list of objects crashed the claim, and the crash handler
    then wrote a blank ``new`` record over it; a wrong-typed one was read and rewritten."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(content)
    with pytest.raises(RunFolderError, match=r"run\.json: .*; move the file aside or fix it"):
        hydra_train(*FAST)
    assert (run / "run.json").read_bytes() == content.encode()


def test_a_record_that_would_not_read_back_is_never_written(tmp_path: Path) -> None:
    record = RunRecord(status="completed")
    record.status = "archived"  # type: ignore[assignment]  # as a bug would
    with pytest.raises(RecordError, match=r"run\.json: status: 'archived' \(input should be"):
        write_record(tmp_path, record)
    assert not (tmp_path / "run.json").exists()


def test_every_committed_run_record_reads_and_writes_back_alike(tmp_path: Path) -> None:
    """The records under docs/results/ (schema 1) read as they are, and read back as written; the
    overrides of each attempt parse (a run skipped or continued from an exported folder compares
    them with its own)."""
    paths = sorted((REPO / "docs" / "results").rglob("run.json"))
    assert paths
    for path in paths:
        record = read_record(path.parent)
        assert record is not None and record.status == "completed" and record.attempts, path
        for attempt in record.attempts:
            parse_overrides(attempt.overrides)
        write_record(tmp_path, record)
        assert read_record(tmp_path) == record, path


def test_a_skipped_attempt_is_recorded_and_changes_nothing_else(
    hydra_train, tmp_path: Path
) -> None:
    """``skip_completed=true`` on a completed run returned without a word in its record."""
    hydra_train(*FAST)
    run = tmp_path / "run"
    before = json.loads((run / "run.json").read_text())
    assert hydra_train(*FAST, "skip_completed=true") == before["metrics"]
    after = json.loads((run / "run.json").read_text())
    assert [(a["action"], a["outcome"]) for a in after["attempts"]] == [
        ("fresh", "completed"),
        ("skip", "skipped"),
    ]
    assert after["attempts"][-1]["ended"]
    assert {**after, "attempts": None} == {**before, "attempts": None}


def test_reading_a_record_loads_no_heavy_library(tmp_path: Path) -> None:
    """The report and the run folder read records: importing the record used to load Hydra,
    rich, OpenCV (and through them numpy) via the package's __init__ and segment.files; reading
    one (its layout checked) loads no OmegaConf either."""
    (tmp_path / "run.json").write_text('{"schema": 2, "status": "completed"}')
    code = (
        "import segment.run.record, segment.run.layout, sys; "
        f"segment.run.record.read_record({str(tmp_path)!r}); "
        "print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in {'cv2', 'hydra', 'rich', 'torch', 'omegaconf'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
