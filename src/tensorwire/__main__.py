"""`python -m tensorwire ...` is the `tensorwire` command."""

import sys

from .cli import main

sys.exit(main())
