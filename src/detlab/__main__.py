"""``python -m detlab`` (also what ``torchrun ... -m detlab train`` runs)."""

import sys

from detlab.cli import main

sys.exit(main())
