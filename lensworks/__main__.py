"""``python -m lensworks``: the command line (also under ``torchrun ... -m lensworks``).

Runs the ``lensworks.cli`` package's own ``__main__``; the library itself never imports the CLI.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("lensworks.cli", run_name="__main__", alter_sys=True)
