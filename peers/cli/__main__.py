"""``python -m peers.cli``: the ``gauntlet`` command (torchrun starts the ranks of ``--nproc`` this way)."""

import sys

from peers.cli import main

sys.exit(main())
