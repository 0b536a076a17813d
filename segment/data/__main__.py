"""``python -m segment.data check data=<name> [overrides]``: validate and summarise a dataset."""

import sys

import segment  # noqa: F401  (registers config resolvers)
from segment.data.check import main

sys.exit(main())
