"""`python -m server.cli` runs the `nbo` command."""

import sys

from server.cli.main import main

sys.exit(main())
