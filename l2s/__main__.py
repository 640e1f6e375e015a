"""``python -m l2s ...``: the ``l2s`` command."""
import sys

from l2s.cli import main

sys.exit(main())
