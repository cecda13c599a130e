"""``python -m agentemit``: the same command line as the ``agentemit`` script."""

import sys

from agentemit.cli.main import main

sys.exit(main())
