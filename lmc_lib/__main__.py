"""``python -m lmc_lib``: the ``lmc`` command (see :mod:`lmc_lib.cli`)."""

import sys

from .cli import main

sys.exit(main())
