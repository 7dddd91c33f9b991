"""``sidemesh config push|get|history|rollback SERVICE``: a service's configs on the
control plane, without curl."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from sidemesh.control.auth import format_time
from sidemesh.control.client import ControlClient
from sidemesh.tools.ops.common import CommandError, control_client, print_json, print_table, run

__all__ = ["main"]


def _read(path: str) -> tuple[bytes, str]:
    """The file's bytes and their content type: JSON for ``.json``, else YAML (of which
    JSON is a subset, so a JSON file of another name is read right too)."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"{path}: {exc.strerror or exc}") from None
    kind = "application/json" if path.endswith(".json") else "application/yaml"
    return data, kind


def _push(client: ControlClient, args: argparse.Namespace) -> int:
    data, kind = _read(args.file)
    headers = {"content-type": kind}
    if args.dry_run:
        answer = client.call("POST", "/v1/validate", content=data, headers=headers)
        if args.json:
            print_json(answer)
        else:
            print(f"{args.file}: valid on {client.url} (nothing stored)")
        return 0
    answer = client.call("PUT", f"/v1/services/{args.service}/config", content=data,
                         headers=headers)
    if args.json:
        print_json(answer)
    elif answer["unchanged"]:
        print(f"{args.service}: unchanged, still version {answer['version']} "
              f"(digest {answer['digest']})")
    else:
        print(f"{args.service}: stored version {answer['version']} (digest "
              f"{answer['digest']}); follow the rollout with: sidemesh proxy-status "
              f"{args.service}")
    return 0


def _get(client: ControlClient, args: argparse.Namespace) -> int:
    params = {"version": args.version} if args.version is not None else {}
    answer = client.call("GET", f"/v1/services/{args.service}/config", params=params)
    if args.output == "json":
        print_json(answer)
        return 0
    rolled = f", rollback of {answer['rollback_of']}" if answer["rollback_of"] else ""
    print(f"# {answer['service']} version {answer['version']}{rolled}, digest "
          f"{answer['digest']}, stored {format_time(answer['created_at'])} by "
          f"{answer['author']}")
    sys.stdout.write(yaml.safe_dump(answer["config"], sort_keys=False))
    return 0


def _history(client: ControlClient, args: argparse.Namespace) -> int:
    versions: list[dict[str, Any]] = client.call(
        "GET", f"/v1/services/{args.service}/history")["versions"]
    if args.json:
        print_json(versions)
        return 0
    if not versions:
        raise CommandError(f"service {args.service!r} has no config on {client.url}")
    print_table(("VERSION", "DIGEST", "CREATED", "AUTHOR", "ROLLBACK OF"), (
        (v["version"], v["digest"], format_time(v["created_at"]), v["author"],
         v["rollback_of"]) for v in versions))
    return 0


def _rollback(client: ControlClient, args: argparse.Namespace) -> int:
    answer = client.call("POST", f"/v1/services/{args.service}/rollback",
                         json={"version": args.to})
    if args.json:
        print_json(answer)
    else:
        print(f"{args.service}: version {args.to} stored again as version "
              f"{answer['version']} (digest {answer['digest']})")
    return 0


def main(args: argparse.Namespace) -> int:
    action = {"push": _push, "get": _get, "history": _history, "rollback": _rollback}[
        args.action]

    def body() -> int:
        with control_client(args) as client:
            return action(client, args)

    return run(f"config {args.action}", body)
