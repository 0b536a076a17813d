"""How much of the project a fresh run goes through before training: the project functions it
enters, and the files they are in, from the start of ``train(cfg)`` to ``Trainer.fit``.

    python benchmarks/run_flow.py [override ...]

Runs one tiny fresh run (synthetic data, 64x96, one epoch, CPU; rendered by an uncounted run
first) in a temporary folder under ``sys.setprofile`` and prints the counts, then the named
functions by file. Any override of train.py
applies after the tiny ones. A measure of how much a reader must open to know what happens before
``fit``, not of speed.
"""

from __future__ import annotations

import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning import Trainer
from omegaconf import open_dict

import segment
from segment.config.compose import config_dir
from segment.training import train

_TINY = [
    "data.image_size=[64,96]",
    "data.num_train=8",
    "data.num_val=4",
    "data.batch_size=4",
    "data.num_workers=0",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "extras.print_config=false",
]


class _BeforeFit(Exception):
    """Raised at ``Trainer.fit``: the count stops there."""


def main(overrides: list[str]) -> None:
    package = Path(segment.__file__).parent
    entered: dict[str, set[str]] = defaultdict(set)

    def profile(frame, event, _arg) -> None:
        path = Path(frame.f_code.co_filename)
        if event == "call" and path.is_relative_to(package):
            entered[path.relative_to(package.parent).as_posix()].add(frame.f_code.co_qualname)

    def fit(*_args, **_kwargs) -> None:
        raise _BeforeFit

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        tiny = [*_TINY, f"paths.root_dir={root}", f"paths.data_dir={root / 'data'}"]
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            for run, counted in (("first", None), ("run", profile)):  # the first renders the data
                cfg = compose("train", overrides=[*tiny, *overrides], return_hydra_config=True)
                with open_dict(cfg):
                    cfg.hydra.run.dir = cfg.hydra.runtime.output_dir = str(root / run)
                    cfg.hydra.job.config_name = "train"
                    cfg.hydra.mode = RunMode.RUN
                HydraConfig.instance().set_config(cfg)
                task = cfg.copy()
                with open_dict(task):
                    del task["hydra"]
                original, Trainer.fit = Trainer.fit, fit
                sys.setprofile(counted)
                try:
                    train(task)
                except _BeforeFit:
                    pass
                finally:
                    sys.setprofile(None)
                    Trainer.fit = original
    functions = sum(len(names) for names in entered.values())
    named = {
        path: {n for n in names if "<" not in n and not n.split(".")[-1][:1].isupper()}
        for path, names in entered.items()
    }  # no comprehensions, lambdas, module or class bodies
    count = sum(len(names) for names in named.values())
    files = sum(1 for names in named.values() if names)
    print(
        f"{functions} project code objects in {len(entered)} files before Trainer.fit; "
        f"{count} named functions in {files} files"
    )
    for path in sorted(named):
        if named[path]:
            print(f"  {path}: {len(named[path])}  ({', '.join(sorted(named[path]))})")


if __name__ == "__main__":
    main(sys.argv[1:])
