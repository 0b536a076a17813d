"""Semantic segmentation of road scenes with U-Nets, Lightning and Hydra."""

import os

# albumentations asks PyPI for a newer version whenever it is imported (every train.py,
# evaluate.py and data check): nothing is fetched that a command did not ask for. Set before
# any module of this package imports it; a value the user set stands.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Nothing else here: `import segment.run.record` (the report, the run folder) stays light. The
# config tree's resolvers are registered by importing segment.config.compose.

__version__ = "0.1.0"
