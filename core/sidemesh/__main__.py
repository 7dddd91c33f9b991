"""``python -m sidemesh``: the same as the ``sidemesh`` command."""

import sys

from sidemesh.tools.cli import main

sys.exit(main())
