"""Allow ``python -m fedshaver``."""

import sys

from fedshaver.cli import main

sys.exit(main())
