"""``python -m timm_tricks`` runs the command line (also under ``accelerate launch -m timm_tricks``)."""

import sys

from .cli import main

sys.exit(main())
