"""``python -m gqm`` and the ``gqm`` console script: see :mod:`gqm.cli`."""

from __future__ import annotations

import sys

from . import cli


def main() -> None:
    sys.exit(cli.main())


if __name__ == "__main__":
    main()
