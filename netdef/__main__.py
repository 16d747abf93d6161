"""``python -m netdef``: the same as the ``netdef`` console script."""
import sys

from netdef.cli import main

sys.exit(main())
