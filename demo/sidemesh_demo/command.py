"""``sidemesh demo``, added to the ``sidemesh`` command through the entry-point group
``sidemesh.commands``. Registering imports nothing heavy: every ``sidemesh`` invocation
runs it, and the demo itself is imported only when the command runs."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from .mesh import main

    return main(args)


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand to ``subparsers`` (the ``sidemesh`` CLI's)."""
    p = subparsers.add_parser(
        "demo", help="run the whole mesh on this machine and show what it did",
        description="Start a control plane, two service versions with sidecars and mTLS, "
        "send traffic, inject failures, and report.")
    p.add_argument("--keep-running", action="store_true",
                   help="keep everything running after the report (Ctrl-C stops)")
    p.set_defaults(handler=_run)
