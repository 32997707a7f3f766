"""``python -m clebsch`` (and ``torchrun -m clebsch``): the ``clebsch`` command."""

import sys

from .cli import main

sys.exit(main())
