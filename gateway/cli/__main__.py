"""``python -m gateway.cli``: the ``wagate`` command, as the installed script runs it."""

import sys

from gateway.cli.wagate import main

if __name__ == "__main__":
    sys.exit(main())
