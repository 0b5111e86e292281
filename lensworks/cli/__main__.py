"""``python -m lensworks.cli COMMAND ...``: the same as the ``lensworks`` command."""

import sys

from lensworks.cli import main

__all__: list[str] = []

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
