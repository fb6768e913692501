import sys

from .ncsn.cli import main

sys.exit(main())
