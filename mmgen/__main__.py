"""``python -m mmgen``: the ``mmgen`` command line (also under ``torchrun -m mmgen``)."""

import sys

from mmgen.commands.cli import main

sys.exit(main())
