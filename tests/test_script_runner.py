"""The tests' script runner: a warm run (forked from a server that imported torch once) behaves as
``python`` does."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.helpers import run_script

# Prints what a script sees of its start, leaves a thread running and an atexit handler, then ends
# as asked.
PROBE = """
import atexit, json, os, sys, threading, time

atexit.register(lambda: print("atexit handler ran", flush=True))
threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished", flush=True))).start()
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "name": __name__, "path0": sys.path[0],
                  "variable": os.environ.get("RUNNER_PROBE"),
                  "own_session": os.getsid(0) == os.getpid()}))
how = sys.argv[1]
if how == "raise":
    raise RuntimeError("boom")
if how == "exit":
    sys.exit("bad input: named here")
if how == "kill":
    os.kill(os.getpid(), 9)
if how == "interrupt":
    raise KeyboardInterrupt
"""


@pytest.mark.parametrize(
    ("how", "status", "stderr"),
    [
        ("ok", 0, ""),
        ("raise", 1, "RuntimeError: boom"),
        ("exit", 1, "bad input: named here"),
        ("kill", -signal.SIGKILL, ""),
        ("interrupt", -signal.SIGINT, "KeyboardInterrupt"),
    ],
)
def test_a_warm_run_behaves_as_a_fresh_interpreter(
    tmp_path: Path, how: str, status: int, stderr: str
) -> None:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "probe.py").write_text(PROBE)
    runs = {
        fresh: run_script(
            ["scripts/probe.py", how, "a b"],
            cwd=tmp_path,
            env={"RUNNER_PROBE": "seen"},
            check=False,
            fresh=fresh,
        )
        for fresh in (True, False)
    }
    for fresh, run in runs.items():
        assert run.returncode == status, (fresh, run.stderr)
        assert stderr in run.stderr, (fresh, run.stderr)
        seen = json.loads(run.stdout.splitlines()[0])
        assert seen == {
            "argv": ["scripts/probe.py", how, "a b"],
            "cwd": str(tmp_path),
            "name": "__main__",
            "path0": str(tmp_path / "scripts"),
            "variable": "seen",
            "own_session": True,
        }
    # the interpreter's exit: threads joined, then atexit handlers (a SIGKILL skips both)
    ending = [] if how == "kill" else ["thread finished", "atexit handler ran"]
    assert [run.stdout.splitlines()[1:] for run in runs.values()] == [ending, ending]


def test_a_variable_read_at_import_time_is_seen_as_in_python(tmp_path: Path) -> None:
    """huggingface_hub reads HF_HUB_OFFLINE once, on import; the warm server imported it with the
    tests' value, so a run asking for another gets a fresh interpreter and sees what ``python``
    sees."""
    (tmp_path / "offline.py").write_text(
        "import huggingface_hub.constants as c; print(c.HF_HUB_OFFLINE)\n"
    )
    for value, seen in (("0", "False"), ("1", "True")):
        runs = [
            run_script(["offline.py"], cwd=tmp_path, env={"HF_HUB_OFFLINE": value}, fresh=fresh)
            for fresh in (True, False)
        ]
        assert [run.stdout.strip() for run in runs] == [seen, seen]
