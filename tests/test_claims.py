"""The lab's claims, each with what was measured: docs/results/README.md holds the full table,
README.md's answer the short one. A number stated there is a number of the committed report the
row names (which regenerates from its run files: test_study.py), and the short table says
nothing the full one does not: a number changed in one place and not the other fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
VERDICTS = ("holds", "does not hold", "not comparable", "not tested here")
CLAIMS = 7  # the lab's conclusions this project tests


def _table(path: Path, header: str) -> list[list[str]]:
    """The rows of the markdown table under ``header`` (its first cell), cells stripped."""
    lines = path.read_text().splitlines()
    [start] = [i for i, line in enumerate(lines) if line.startswith(f"| {header} |")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _numbers(text: str) -> set[str]:
    """Every number in ``text`` as written, thousands separators dropped (the report writes
    images both ways)."""
    return {n.replace(",", "") for n in re.findall(r"(?<![\w.])\d[\d,]*(?:\.\d+)?", text)}


def _verdict(cell: str) -> str:
    """The bold verdict a cell opens with (what follows it qualifies it)."""
    found = re.match(r"\*\*([^*]+)\*\*", cell)
    return found.group(1) if found else cell


def _links(cell: str) -> list[Path]:
    return [RESULTS / target for target in re.findall(r"\]\(([^)]+\.md)\)", cell)]


FULL = _table(RESULTS / "README.md", "the lab's claim")
SHORT = _table(ROOT / "README.md", "the lab's claim")


def test_every_claim_has_one_row_with_a_verdict_a_report_and_a_command() -> None:
    assert len(FULL) == CLAIMS and len(SHORT) == CLAIMS
    for claim, measured, verdict, source, command in FULL:
        assert _verdict(verdict) in VERDICTS, (claim, verdict)
        assert _numbers(measured), claim  # a measurement, not a word
        reports = _links(source)
        assert reports and all(report.is_file() for report in reports), (claim, source)
        folders = {report.parent.relative_to(ROOT).as_posix() for report in reports}
        assert "python " in command and all(folder in command for folder in folders), command
    assert [row[0] for row in SHORT] == [row[0] for row in FULL]
    assert [_verdict(row[2]) for row in SHORT] == [_verdict(row[2]) for row in FULL]


@pytest.mark.parametrize("row", FULL, ids=[row[0][:40] for row in FULL])
def test_each_measured_number_is_in_the_report_it_names(row: list[str]) -> None:
    claim, measured, _, source, _ = row
    reported = set().union(*(_numbers(report.read_text()) for report in _links(source)))
    assert _numbers(measured) <= reported, sorted(_numbers(measured) - reported)


@pytest.mark.parametrize("row", SHORT, ids=[row[0][:40] for row in SHORT])
def test_the_short_table_says_only_what_the_full_one_does(row: list[str]) -> None:
    [full] = [f for f in FULL if f[0] == row[0]]
    assert _numbers(" ".join(row[1:])) <= _numbers(" ".join(full[1:])), row[0]
