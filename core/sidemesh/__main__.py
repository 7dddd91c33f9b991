"""``python -m sidemesh``: the same as the ``sidemesh`` command."""

import sys

from .cli import main

sys.exit(main())
