"""The run folder's decision, rule by rule, read from docs/reliability.md's table: the table a
reader trusts is the one ``decide()`` is held to, without training."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from segment.run.decision import Asked, decide, refusal
from segment.run.record import Attempt, RunRecord

DOC = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"
HEADER = "| record | results on disk | asked | checkpoint found | the attempt |"
OWN, OTHER = Path("run/checkpoints/last.ckpt"), Path("other/checkpoints/last.ckpt")
ACTIONS = {
    "trains afresh": "fresh",
    "continues": "continue",
    "skipped": "skip",
    "refused": "refuse",
}


def _rows() -> list[list[str]]:
    lines = DOC.read_text().splitlines()
    start = lines.index(HEADER) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _case(status: str, results: str, asked: str, found: str) -> tuple:
    """A row's first four cells as ``decide``'s arguments."""
    other = "another run's file" in asked
    ckpt = (
        "last"
        if "ckpt_path=last" in asked
        else str(OTHER if other else OWN)
        if "ckpt_path=" in asked
        else None
    )
    overrides = ("seed=2",) if "other overrides" in asked else ("seed=1",)
    record = (
        None
        if status == "none"
        else RunRecord(status=status, attempts=[Attempt(started="t0", overrides=["seed=1"])])
    )
    what = Asked(ckpt, "skip_completed=true" in asked, "overwrite=true" in asked, overrides)
    checkpoint = {"yes": OTHER if other else OWN, "no": None}[found]
    return record, {"yes": True, "no": False}[results], what, checkpoint, not other


ROWS = _rows()


def test_the_documented_table_covers_every_way_a_folder_is_met() -> None:
    """The table is read whole: every status a record can hold and every way of asking."""
    statuses = {row[0] for row in ROWS}
    assert statuses == {"none", "new", "running", "completed", "stopped", "interrupted", "failed"}
    assert {ACTIONS[next(a for a in ACTIONS if row[4].startswith(a))] for row in ROWS} == set(
        ACTIONS.values()
    )
    assert len(ROWS) >= 24


@pytest.mark.parametrize("row", ROWS, ids=[" | ".join(row[:4]) for row in ROWS])
def test_decide_follows_every_row_of_the_documented_table(row: list[str]) -> None:
    record, holds, asked, found, inside = _case(*row[:4])
    decision = decide(record, holds, asked, found, inside)
    said = row[4]
    action = ACTIONS[next(a for a in ACTIONS if said.startswith(a))]
    assert decision.action == action, said
    assert decision.archive == ("archiving" in said), said
    assert decision.own_config == ("under its saved overrides" in said), said
    assert decision.checkpoint == (found if action == "continue" else None)
    message = (
        refusal(Path("run"), record or RunRecord(), decision)
        if action == "refuse"
        else decision.reason
    )
    for words in re.findall(r'"([^"]+)"', said):
        assert words in message, (said, message)
