"""``python -m worker.models ensure|status|verify``."""

import sys

from .cli import main

raise SystemExit(main(sys.argv[1:]))
