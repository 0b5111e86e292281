"""``python -m lensworks``: the command line (also under ``torchrun ... -m lensworks``)."""

import sys

from lensworks.cli import main

if __name__ == "__main__":
    sys.exit(main())
