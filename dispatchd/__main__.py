"""`python -m dispatchd` runs the command line."""

import sys

from dispatchd.cli import main

sys.exit(main())
