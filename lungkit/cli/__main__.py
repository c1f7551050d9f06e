"""`python -m lungkit.cli`: the `lungkit` command."""

import sys

from lungkit.cli import main

sys.exit(main())
