"""``python -m lmpo``: the ``lmpo`` command."""

import sys

from lmpo.cli import main

sys.exit(main())
