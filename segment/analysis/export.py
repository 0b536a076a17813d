"""Export a sweep's run files so that they can travel (a repository, a paper's supplement): ``python
-m segment.analysis export <sweep> <dest>``.

Each run folder's record, ``.hydra/``, thresholds file, CSV log and console log are copied, with the
mask snapshots the report's sheet shows (of each arm's first seed: input, truth, the validations at
which each headline level was first reached, and the last); no checkpoints and no TensorBoard
events. Paths of the machine that trained them are replaced by their role (``<data.root>``,
``<sweep.dir>``, ...), so nothing names the machine, and ``python -m segment.analysis.report
<dest>`` writes the same report from the export as from the sweep.

It reads only inside the sweep and writes only inside ``dest`` (new or empty, or ``--merge``: added
to, never a file replaced): a symbolic link among the files to copy, or on the way to one, refuses
the export before anything is written, naming it (a run record naming files outside its folder is
refused when read: that run is exported under the default names and listed as unreadable).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from segment.analysis.runs import Run, load_runs, plain_yaml
from segment.analysis.study import Study
from segment.files import write_atomic
from segment.run.layout import RunLayout

__all__ = ["export", "roles"]

_SITE = re.compile(r"/[^\s'\"=]*?/site-packages/")  # a Python installation's packages
_HOME = re.compile(r"(?<![\w.])(/root|/home/[^/\s'\"]+|/Users/[^/\s'\"]+)(?=/)")  # a home folder


def roles(run: Run, sweep: Path) -> dict[str, str]:
    """The machine paths a run's files hold, each with its role, longest first: a run folder inside
    its sweep keeps its own name (``<sweep.dir>/<job>``)."""
    hydra = run.folder / RunLayout.of(run.record.layout).hydra / "hydra.yaml"
    settings = plain_yaml(hydra).get("hydra") or {}

    def setting(key: str) -> str:
        value: Any = settings
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value if isinstance(value, str) and value.startswith("/") else ""

    typed = {
        item.split("=", 1)[0]: item.split("=", 1)[1]
        for a in run.record.attempts
        for item in a.command or ()  # a schema-1 record may hold none
        if item.startswith(("hydra.sweep.dir=", "hydra.run.dir="))
    }
    sweeps = {str(sweep.resolve()), setting("sweep.dir"), typed.get("hydra.sweep.dir", "")}
    found = dict.fromkeys(sorted(p for p in sweeps if p), "<sweep.dir>")
    for folder in (
        setting("run.dir"),
        setting("runtime.output_dir"),
        typed.get("hydra.run.dir", ""),
    ):
        if folder and not any(folder.startswith(f"{s}/") or folder == s for s in found):
            found[folder] = "<run.dir>"
    if setting("runtime.cwd"):
        found.setdefault(setting("runtime.cwd"), "<cwd>")
    for key in ("data.root", "paths.root_dir", "paths.data_dir", "paths.log_dir"):
        value = run.value(key)
        if value and str(value).startswith("/"):
            found.setdefault(str(value), f"<{key}>")
    detail = str((run.record.encoder_weights_used or {}).get("detail") or "")
    if detail.startswith("/"):
        found.setdefault(str(Path(detail).parent), "<cache>")
    return dict(sorted(found.items(), key=lambda item: -len(item[0])))


def _clean(text: str, replace: dict[str, str]) -> str:
    for path, role in replace.items():  # whole path names only: /a/study is no part of /a/study-2
        text = re.sub(re.escape(path) + r"(?![\w.-])", role.replace("\\", "\\\\"), text)
    return _HOME.sub("~", _SITE.sub("<site-packages>/", text))


# An override whose value the export replaced by a role or a home (``data.root=<data.root>``,
# ``x.dir=~/y``), in .hydra/overrides.yaml's list and as a string of run.json (its attempts'
# overrides and commands): neither is a value in Hydra's grammar, so it is quoted
# (``data.root='<data.root>'``) and every exported override reads in Hydra (``skip_completed``
# leaves such a value out of its comparison: segment.config.names.comparable).
_ROLE_OVERRIDE = {
    "overrides.yaml": re.compile(r"^(- [^=\n]+=)([<~][^'\n]*)$", re.M),
    RunLayout.record: re.compile(r'(?<=")([^"=\s]+=)([<~][^"\'\\]*)(?=")'),
}


def _quoted(name: str, text: str) -> str:
    """``text`` of the file ``name`` with each override's role quoted (:data:`_ROLE_OVERRIDE`)."""
    found = _ROLE_OVERRIDE.get(name)
    return found.sub(r"\1'\2'", text) if found else text


def export(sweep: str | Path, dest: str | Path, merge: bool = False) -> list[Path]:
    """Copy ``sweep``'s run files into ``dest`` (see the module's text); returns the run folders.

    ``dest`` must be new or empty unless ``merge``; nothing is written unless every file can be:
    a link on the way to a file to copy or to write, or (merging) a file already there, refuses
    the export (ValueError naming it), leaving ``dest`` as it was."""
    sweep, dest = Path(sweep), Path(dest)
    if dest.resolve() == sweep.resolve() or sweep.resolve() in dest.resolve().parents:
        raise ValueError(f"{dest} is inside the sweep {sweep}; export into a folder of its own")
    if dest.exists() and not (dest.is_dir() and (merge or not any(dest.iterdir()))):
        raise ValueError(
            f"{dest} is not an empty folder: export into a new one, or add to it with --merge "
            "(merge=True), which never replaces a file"
        )
    study = Study(load_runs(sweep))
    copies = _files(study)
    _check_targets([source for _, source, _ in copies], sweep, dest)
    replace = {id(run): roles(run, sweep) for run in study.runs}
    for run, source, text in copies:
        target = dest / source.relative_to(sweep)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not text:
            shutil.copyfile(source, target)
            continue
        write_atomic(
            target,
            _quoted(source.name, _clean(source.read_text(errors="replace"), replace[id(run)])),
        )
    return [dest / run.folder.relative_to(sweep) for run in study.runs]


def _files(study: Study) -> list[tuple[Run, Path, bool]]:
    """Every file an export copies, with its run and whether it is text to clean (else copied as
    is): each run's record, thresholds, log, Hydra and CSV files; the mask snapshots of the run
    the mask sheet shows for each arm."""
    shown = {id(arm.runs[0]) for arm in study.arms}  # the mask sheet's run of each arm
    copies: list[tuple[Run, Path, bool]] = []  # (run, file, text to clean: else copied as is)
    for run in study.runs:
        layout = RunLayout.of(run.record.layout)
        files = [run.folder / name for name in (layout.record, layout.thresholds, layout.log)]
        files += [
            p for part in (layout.hydra, layout.csv) for p in sorted((run.folder / part).rglob("*"))
        ]
        copies += [(run, p, True) for p in files if p.is_file() or p.is_symlink()]
        copies += [
            (run, p, False) for p in (_snapshots(study, run, layout) if id(run) in shown else ())
        ]
    return copies


def _check_targets(sources: list[Path], sweep: Path, dest: Path) -> None:
    """Refuse an export that would follow a link (reading or writing outside its folders) or
    replace a file."""
    for source in sources:
        target = dest / source.relative_to(sweep)
        for path, top in ((source, sweep), (target, dest)):  # a link is never followed
            if path.resolve() != top.resolve() / path.relative_to(top):
                raise ValueError(
                    f"{path} is a symbolic link or in a linked folder: an export never follows one "
                    "(it would read or write outside the sweep or the destination); replace it "
                    "by a copy of what it points to, or remove it"
                )
        if target.exists() or target.is_symlink():
            raise ValueError(f"{target} exists: a merge never replaces a file; remove it first")


def _snapshots(study: Study, run: Run, layout: RunLayout) -> list[Path]:
    """The mask snapshots the report can show of ``run``."""
    if not run.usable:
        return []
    steps = {run.validations[-1]["step"]}
    for level in study.headline:
        crossing = run.crossing(level.metric, level.mode, level.level)
        if crossing is not None and crossing.reached:
            steps.add(crossing.step)
    files = [layout.snapshot(run.folder, "input"), layout.snapshot(run.folder, "truth")]
    files += [layout.snapshot(run.folder, step) for step in sorted(steps)]
    return [path for path in files if path.is_file()]
