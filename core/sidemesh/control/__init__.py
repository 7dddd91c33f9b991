"""The sidemesh control plane: config store, distribution API and certificate authority."""

from __future__ import annotations

import argparse

__all__ = ["main", "main_token"]


def main(args: argparse.Namespace) -> int:
    """``sidemesh control``: imported only when run (it pulls in uvicorn and the store)."""
    from sidemesh.control.command import main as run

    return run(args)


def main_token(args: argparse.Namespace) -> int:
    """``sidemesh token``."""
    from sidemesh.control.command import main_token as run

    return run(args)
