"""The package declares what it imports, lists all its subpackages, and ships its config tree."""

from __future__ import annotations

import ast
import os
import re
import shutil
import socket
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

from tests.helpers import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# Imported only where their extra is installed (they are declared as extras).
OPTIONAL = {"h5py": "hed", "onnx": "onnx", "wandb": "wandb", "mlflow": "mlflow"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_subpackage_is_listed() -> None:
    """The code's packages and the config groups (data-only packages under ``segment.conf``)."""
    code = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "segment").rglob("__init__.py")
    }
    groups = {
        ".".join(("segment", *p.relative_to(REPO).parts))
        for p in [REPO / "conf", *(REPO / "conf").rglob("*")]
        if p.is_dir() and p.name != "__pycache__"
    }
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == code | groups


def test_what_the_code_imports_is_declared() -> None:
    declared = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = {
        extra: {_name(r) for r in reqs}
        for extra, reqs in PYPROJECT["project"]["optional-dependencies"].items()
    }
    distributions = metadata.packages_distributions()
    imported = set()
    for path in (REPO / "segment").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {
        name for name in imported if name in distributions and name not in sys.stdlib_module_names
    }
    for module in sorted(third_party - {"segment"}):
        names = {d.lower().replace("_", "-") for d in distributions[module]}
        if module in OPTIONAL:
            assert names & extras[OPTIONAL[module]], (
                f"{module} should be in the {OPTIONAL[module]} extra"
            )
        else:
            assert names & declared, (
                f"segment imports {module} ({names}) but pyproject does not declare it"
            )


@pytest.mark.slow
def test_the_wheel_ships_the_config_tree(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "segment", "conf"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(
            REPO / name,
            source / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if (REPO / name).is_dir() else {}),
        )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("road_segment_unet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in REPO.joinpath("conf").rglob("*.yaml"):
        assert f"segment/conf/{config.relative_to(REPO / 'conf').as_posix()}" in names, config
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "from segment.config.compose import config_dir; print(config_dir())",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert Path(found) == site / "segment" / "conf"


def test_importing_the_package_stays_light() -> None:
    """``import segment`` (what train.py does first) loads neither smp nor the Hugging Face hub."""
    code = (
        "import sys, segment; print(sorted(m for m in ('segmentation_models_pytorch', "
        "'huggingface_hub') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


def test_printing_the_config_writes_nothing_and_measures_nothing(tmp_path: Path) -> None:
    """``train.py --cfg job`` composes, prints and stops: no run folder, no benchmark, no cache
    file."""
    cache, logs = tmp_path / "cache", tmp_path / "logs"
    env = {**os.environ, "SEGMENT_CACHE_DIR": str(cache)}
    result = subprocess.run(
        [sys.executable, "train.py", "--cfg", "job", f"paths.log_dir={logs}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "precision: auto" in result.stdout, result.stderr[-2000:]
    assert not cache.exists() and not logs.exists()


def test_the_report_needs_no_lightning_and_the_schema_no_nets() -> None:
    """Two layering rules: writing a report imports no Lightning (the threshold rule lives in
    segment.analysis, the layout in segment.run.layout), and the config checks import nothing of
    segment.models (one signature checker, in segment.config.schema)."""
    code = (
        "import sys, segment.analysis.report, segment.analysis.export; print(sorted(m for m in "
        "sys.modules if m.split('.')[0] == 'lightning'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
    code = (
        "import sys, segment.config.schema; "
        "print(sorted(m for m in sys.modules if 'segment.models' in m))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr


SCIENCE = ("analysis", "callbacks", "data", "device", "evaluation", "models")
# What the science packages may use of the rest: the run folder's formats (light leaves, read by the
# report, written by the callbacks), names of runs and overrides, the atomic writer. Never the
# driver (build, training, evaluating, cli), a run's life (folder, decision, resume, loggers),
# checkpoints or the config machinery: the driver hands the science what those produce.
SHARED = ("segment.run.record", "segment.run.layout", "segment.config.names", "segment.files")


def test_the_science_packages_import_no_driver_no_checkpoints_no_run_life() -> None:
    """Importing every science module (their command lines, ``__main__``, are drivers) loads no
    segment module outside them but the shared leaves; nor does any of them import one later,
    inside a function, or name one in a string (``import_module``, ``get_object``, a
    ``_target_``)."""
    modules = [
        ".".join(path.relative_to(REPO).with_suffix("").parts)
        for package in SCIENCE
        for path in sorted((REPO / "segment" / package).rglob("*.py"))
        if path.stem not in ("__init__", "__main__")
    ]
    allowed = (*(f"segment.{p}" for p in SCIENCE), *SHARED)
    parents = ("segment.config", "segment.run")  # the leaves' packages: docstrings, no code
    code = (
        f"import importlib, sys; [importlib.import_module(m) for m in {modules!r}]; "
        f"print(sorted(m for m in sys.modules if m.startswith('segment.') and m not in "
        f"{parents!r} and not any(m == a or m.startswith(a + '.') for a in {allowed!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
    later = []
    for module in modules:
        tree = ast.parse((REPO / (module.replace(".", "/") + ".py")).read_text())
        for node in ast.walk(tree):
            named = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            named += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            # a dotted name as a whole string: importlib.import_module, get_object, a _target_
            text = node.value if isinstance(node, ast.Constant) else None
            named += [text] if isinstance(text, str) and re.fullmatch(r"[\w.]+", text) else []
            later += [
                f"{module}: {name}"
                for name in named
                if name.startswith("segment.")
                and not any(name == a or name.startswith(a + ".") for a in allowed)
            ]
    assert later == []


def test_the_run_folder_names_are_defined_once() -> None:
    """One definition of the run folder's file names, the layout's (the record takes its own name
    from it): no other module of segment/ spells them (docstrings aside)."""
    import ast

    homes = {
        "run.json": "layout.py",
        ".hydra": "layout.py",
        "thresholds.json": "layout.py",
        "metrics.csv": "layout.py",
        "train.log": "layout.py",
    }
    found: dict[str, set[str]] = {name: set() for name in homes}
    for path in (REPO / "segment").rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and node.value in homes
                and id(node) not in docstrings
            ):
                found[node.value].add(path.name)
    assert found == {name: {home} for name, home in homes.items()}


def test_no_file_names_a_path_of_the_machine_it_was_made_on() -> None:
    """Committed results used to carry the training machine's folders (``/work/...`` sweeps, a
    home folder's weight cache); the export replaces them by their role."""
    machine = re.compile(r"(?<![\w.<~])(/work|/root|/home/[\w.-]+|/Users/[\w.-]+)/")
    found = []
    for top in ("README.md", "pyproject.toml", "conf", "docs", "segment", "benchmarks", ".ci"):
        paths = [REPO / top] if (REPO / top).is_file() else sorted((REPO / top).rglob("*"))
        for path in paths:
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            try:
                text = path.read_text()
            except UnicodeDecodeError:  # figures
                continue
            found += [f"{path.relative_to(REPO)}: {m.group(0)}" for m in machine.finditer(text)]
    assert not found, found[:10]


@pytest.mark.filterwarnings("ignore:A test tried to use socket:UserWarning")
def test_a_test_cannot_open_a_network_socket() -> None:
    """pytest-socket (the dev extra, pyproject's addopts): a connection a test would open fails at
    once, instead of passing where a server answers; local Unix sockets stay (the warm script
    server, asyncio). A test that needs the network says so: @pytest.mark.enable_socket."""
    from pytest_socket import SocketBlockedError

    with pytest.raises(SocketBlockedError):
        socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    for end in socket.socketpair():
        end.close()
