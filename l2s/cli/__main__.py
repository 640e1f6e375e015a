"""``python -m l2s.cli ...``: the ``l2s`` command, for launchers that take a module
(``accelerate launch -m l2s.cli shapes grpo ...``)."""
import sys

from . import main

sys.exit(main())
