"""``sidemesh completion bash|zsh|fish``: the completion script shtab writes from the
argument parser itself, so every command and option (those other distributions add
included) completes as ``--help`` lists it."""

from __future__ import annotations

import argparse
import sys

import shtab

__all__ = ["main"]


def main(args: argparse.Namespace) -> int:
    script = shtab.complete(args.root_parser, shell=args.shell)
    sys.stdout.write(script if script.endswith("\n") else script + "\n")
    return 0
