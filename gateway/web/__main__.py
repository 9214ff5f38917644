"""``python -m gateway.web``: the HTTP server process, started by ``wagate serve``."""

import sys

from gateway.web.server import main

if __name__ == "__main__":
    sys.exit(main())
