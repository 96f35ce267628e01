"""``python -m qfocal.integrations.yolov5``: ``qfocal yolov5-train``."""

import sys

from . import main

sys.exit(main())
