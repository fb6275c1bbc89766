"""``python -m gpunn`` runs the command line."""

import sys

from gpunn.cli.main import main

sys.exit(main())
