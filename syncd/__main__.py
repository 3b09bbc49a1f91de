"""``python -m syncd``."""

import sys

from syncd.runtime.cli import main

sys.exit(main())
