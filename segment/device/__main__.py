"""``python -m segment.device pack [--camvid DIR] [--python-version 3.12] ...``: see
:mod:`segment.device.pack`."""

import sys

from segment.device.pack import main

sys.exit(main())
