"""The run folder's decision, rule by rule (docs/reliability.md's table), without training."""

from __future__ import annotations

from pathlib import Path

import pytest

from segment.record import Attempt, RunRecord
from segment.runfolder import Asked, decide

CKPT = Path("run/checkpoints/last.ckpt")


def _record(status: str, overrides: tuple[str, ...] = ("seed=1",)) -> RunRecord:
    return RunRecord(status=status, attempts=[Attempt(started="t0", overrides=list(overrides))])


# (record status or None, results on disk, what was asked, checkpoint found, inside the folder)
# -> (action, archive first, continue under the saved config, words of the reason)
RULES = [
    # a new folder trains afresh
    (None, False, Asked(), None, True, ("fresh", False, False, "")),
    # a folder holding a run is never silently reused
    ("completed", True, Asked(), None, True, ("refuse", False, False, "occupied")),
    ("interrupted", True, Asked(), CKPT, True, ("refuse", False, False, "occupied")),
    (None, True, Asked(), None, True, ("refuse", False, False, "occupied")),  # files, no record
    # overwrite=true archives the earlier run, then trains afresh
    ("completed", True, Asked(overwrite=True), None, True, ("fresh", True, False, "")),
    # a failure that left nothing (a refused or failed first attempt) is replaced, its record kept
    ("failed", False, Asked(), None, True, ("fresh", False, False, "")),
    ("new", False, Asked(), None, True, ("fresh", False, False, "")),
    # ... but a failed run with results is a run
    ("failed", True, Asked(), CKPT, True, ("refuse", False, False, "occupied")),
    # skip_completed: skip a completed run of the same overrides, continue an unfinished one
    (
        "completed",
        True,
        Asked(skip_completed=True, overrides=("seed=1",)),
        CKPT,
        True,
        ("skip", False, False, ""),
    ),
    (
        "completed",
        True,
        Asked(skip_completed=True, overrides=("seed=2",)),
        CKPT,
        True,
        ("refuse", False, False, "other overrides"),
    ),
    ("interrupted", True, Asked(skip_completed=True), CKPT, True, ("continue", False, True, "")),
    ("running", True, Asked(skip_completed=True), CKPT, True, ("continue", False, True, "")),
    ("failed", True, Asked(skip_completed=True), CKPT, True, ("continue", False, True, "")),
    # e: stopped before its first validation: nothing to continue, so it starts afresh
    ("running", True, Asked(skip_completed=True), None, True, ("fresh", True, False, "")),
    ("running", True, Asked(ckpt_path="last"), None, True, ("fresh", True, True, "afresh")),
    ("interrupted", False, Asked(ckpt_path="last"), None, True, ("fresh", False, True, "afresh")),
    # ckpt_path=last continues the folder's newest checkpoint under the run's own config
    ("running", True, Asked(ckpt_path="last"), CKPT, True, ("continue", False, True, "")),
    ("completed", True, Asked(ckpt_path="last"), CKPT, True, ("continue", False, True, "")),
    # ... and is refused where there is nothing to continue
    (
        "completed",
        True,
        Asked(ckpt_path="last"),
        None,
        True,
        ("refuse", False, False, "left no checkpoint"),
    ),
    (None, False, Asked(ckpt_path="last"), None, True, ("refuse", False, False, "nothing to cont")),
    # ckpt_path=<file>: this folder's own, or another run's into a folder without a run
    ("interrupted", True, Asked(ckpt_path=str(CKPT)), CKPT, True, ("continue", False, False, "")),
    (
        None,
        False,
        Asked(ckpt_path="other.ckpt"),
        Path("other.ckpt"),
        False,
        ("continue", False, False, ""),
    ),
    (
        "completed",
        True,
        Asked(ckpt_path="other.ckpt"),
        Path("other.ckpt"),
        False,
        ("refuse", False, False, "another run's"),
    ),
    (
        "completed",
        True,
        Asked(ckpt_path="other.ckpt", overwrite=True),
        Path("other.ckpt"),
        False,
        ("continue", True, False, ""),
    ),
]


@pytest.mark.parametrize(("status", "holds", "asked", "found", "inside", "expected"), RULES)
def test_the_decision_follows_the_documented_table(
    status, holds, asked, found, inside, expected
) -> None:
    record = None if status is None else _record(status)
    decision = decide(record, holds, asked, found, inside)
    action, archive, own, words = expected
    assert (decision.action, decision.archive, decision.own_config) == (action, archive, own)
    assert words in decision.reason
    assert decision.checkpoint == (found if action == "continue" else None)


def test_every_rule_of_the_table_is_in_the_documentation() -> None:
    """docs/reliability.md states each action this table tests (a rule added here is documented)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    for phrase in (
        "never silently reused",
        "overwrite=true",
        "skip_completed",
        "ckpt_path=last",
        "before its first validation",
        "another run's checkpoint",
    ):
        assert phrase in text, phrase
