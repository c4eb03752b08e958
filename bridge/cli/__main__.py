"""``python -m bridge.cli``: the same as the ``steerbridge`` script."""

import sys

from . import main

if __name__ == "__main__":  # not when a walk over the package imports it
    sys.exit(main())
