"""What the operator's commands share: the control plane and a sidecar's admin API as
clients, one-line errors, tables and JSON on stdout."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from sidemesh.api.durations import format_duration
from sidemesh.config.errors import ConfigError
from sidemesh.control.auth import ADMIN_TOKEN_FILE
from sidemesh.control.client import (
    CONTROL_ENV,
    DEFAULT_CONTROL_URL,
    ControlClient,
    ControlError,
    read_admin_token,
)
from sidemesh.tools.ops import DEFAULT_ADMIN_URL

__all__ = [
    "CommandError",
    "admin_get",
    "admin_url",
    "age",
    "control_client",
    "control_url",
    "print_json",
    "print_table",
    "run",
]

#: Where ``sidemesh control`` keeps its admin token when started in this directory.
DEFAULT_DATA_DIR = Path("sidemesh-data")
ADMIN_ENV = "SIDEMESH_ADMIN"


class CommandError(Exception):
    """What went wrong, for the user, in one line."""


def run(name: str, body: Callable[[], int]) -> int:
    """``body()``'s exit status; a failure is one line on stderr (and a config's errors
    under it), status 1."""
    try:
        return body()
    except (CommandError, ControlError) as exc:
        print(f"sidemesh {name}: {exc}", file=sys.stderr)
        for error in getattr(exc, "errors", []):
            print(f"  {_config_error(error)}", file=sys.stderr)
        return 1


def _config_error(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    known = {k: error.get(k) for k in ("plugin", "plugin_version", "rule")}
    return str(ConfigError(str(error.get("path", "")), str(error.get("message", "")), **known))


def control_url(args: argparse.Namespace) -> str:
    """``--control``, else ``$SIDEMESH_CONTROL``, else the local control plane."""
    url: str = args.control or os.environ.get(CONTROL_ENV) or DEFAULT_CONTROL_URL
    return url


def control_client(args: argparse.Namespace, token: bool = True) -> ControlClient:
    """The control plane of :func:`control_url`, with the admin token when ``token``."""
    url = control_url(args)
    admin = read_admin_token(args.admin_token_file, DEFAULT_DATA_DIR / ADMIN_TOKEN_FILE) \
        if token else None
    return ControlClient(url, admin, args.control_ca)


def admin_url(args: argparse.Namespace) -> str:
    """``--admin`` (or ``$SIDEMESH_ADMIN``, or the usual address); ``host:port`` is
    taken as ``http://host:port``, as a config's ``admin:`` names it."""
    url: str = args.admin or os.environ.get(ADMIN_ENV) or DEFAULT_ADMIN_URL
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def admin_get(url: str, path: str) -> Any:
    """The JSON answer of a sidecar's admin API.

    :raises CommandError: when it does not answer, or not with ``200`` and JSON.
    """
    try:
        response = httpx.get(url + path, timeout=10)
    except httpx.HTTPError as exc:
        raise CommandError(f"sidecar admin API {url} unreachable: "
                           f"{exc or type(exc).__name__}") from None
    if response.status_code != 200:
        raise CommandError(f"sidecar admin API {url} answered {response.status_code} "
                           f"to {path}: {response.text[:200]}")
    try:
        return response.json()
    except ValueError:
        raise CommandError(f"{url}{path} did not answer JSON: is it a sidemesh admin "
                           "API?") from None


def age(seconds: float) -> str:
    """``90.4`` -> ``1m30s``: to the second, as kubectl's AGE."""
    return format_duration(max(0, round(seconds)))


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Columns as kubectl and istioctl print them: upper-case headers, no borders, never
    wrapped (piped output is read by grep and awk)."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for header in headers:
        table.add_column(header, no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*("-" if cell is None else str(cell) for cell in row))
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 10_000,
                      emoji=False, markup=False)
    with console.capture() as captured:
        console.print(table)
    # rich pads every line to the table's width: no trailing blanks in a file or a diff.
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
