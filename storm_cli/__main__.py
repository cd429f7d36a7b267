"""``python -m storm_cli`` is the ``storm`` command."""

import sys

from storm_cli.main import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
