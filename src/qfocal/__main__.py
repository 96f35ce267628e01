"""``python -m qfocal`` runs the ``qfocal`` command."""

import sys

from .cli import main

sys.exit(main())
