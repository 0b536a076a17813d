"""Semantic segmentation of road scenes with U-Nets, Lightning and Hydra."""

import os

# albumentations asks PyPI for a newer version whenever it is imported (every train.py,
# evaluate.py and data check): nothing is fetched that a command did not ask for. Set before
# anything below imports it; a value the user set stands.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from segment.config import register  # noqa: E402 -- after the switch above

register()  # the config tree's resolvers and top-level schema

__version__ = "0.1.0"
