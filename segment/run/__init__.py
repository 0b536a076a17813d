"""A run's life, one module per concern (this file imports nothing: the record stays light).

- ``decision.py``: :func:`decide` — what an attempt does with its folder (fresh, continue, skip,
  refuse), a pure function of the record, the request and the checkpoint found; its refusals.
- ``folder.py``: :class:`RunFolder` — carries the decision out: the lock, stop signals, every
  attempt recorded, ``.hydra/`` and the archive of an earlier run written only once it trains.
- ``record.py``: ``run.json``, validated (pydantic), one reader and one writer; light.
- ``layout.py``: where a run keeps its files, the one definition of their names; light.
- ``resume.py``: what a checkpoint carries for a continuation and the checks before one.
- ``loggers/``: one adapter per logger (its mask panel, hyperparameters, scores, summary line,
  folders in the run), continuing a resumed run's logs where its checkpoint was written.

Checkpoint files themselves (atomic writing, safe reading, checksums, ``init_from``, a module
rebuilt from one) are ``segment.checkpoints``, beside this package: the drivers (``training``,
``evaluating``) use both. The science packages (analysis, callbacks, data, device, evaluation,
models) use only the record and the layout here: the formats of what a run leaves.
"""
