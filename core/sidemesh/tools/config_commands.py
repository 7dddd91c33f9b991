"""The commands that read configs and plugins without running anything: ``validate``,
``plugins``, ``schema`` and ``explain``.

Registering imports only argparse: the config code loads when a command runs."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the commands to ``sub``, the argparse sub-parsers of ``sidemesh``."""
    formatter = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("validate", help="validate config files; exit 1 listing every error",
                       description="Validate sidecar configs against the core schema, the "
                       "installed plugins' schemas and versions, and cross-references.")
    p.add_argument("files", nargs="+", metavar="FILE", help="sidemesh.yaml files")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("plugins", help="installed plugins: name, distribution, version, hooks",
                       description="List installed plugins (entry-point group 'sidemesh') "
                       "and the ones that failed to load; exit 1 if any failed.")
    p.add_argument("--json", action="store_true", help="machine-readable list")
    p.set_defaults(handler=cmd_plugins)

    p = sub.add_parser("schema", help="print the composed JSON Schema, or one plugin's",
                       description="Print the JSON Schema (Draft 2020-12) of sidemesh.yaml "
                       "with every installed plugin's config schema composed in, or the "
                       "schema of one plugin's config.")
    p.add_argument("plugin", nargs="?", metavar="PLUGIN", help="a plugin name (see "
                   "'sidemesh plugins')")
    p.set_defaults(handler=cmd_schema)

    p = sub.add_parser(
        "explain", help="which listener/route/chain/endpoints a request would get, and why",
        formatter_class=formatter,
        description="Show, for each listener, the routes tried and why they did not match, "
        "the chain that would run and what each of its policies says it would do, and the "
        "cluster's endpoints.",
        epilog="examples:\n"
        "  sidemesh explain -c sidemesh.yaml GET http://reviews/reviews/1\n"
        "  sidemesh explain -c sidemesh.yaml POST /api -H 'host: ratings' -H 'x-user: jason'\n"
        "  sidemesh explain --admin 127.0.0.1:15000 GET http://reviews/reviews/1")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("-c", "--config", metavar="FILE", help="sidemesh.yaml")
    source.add_argument("--admin", metavar="URL", help="instead of a file: the config a "
                        "running sidecar applied, from its admin API")
    p.add_argument("method", metavar="METHOD", help="GET, POST, ...")
    p.add_argument("url", metavar="URL", help="http://host/path?query, or /path with -H 'host: x'")
    p.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
                   help="a request header (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(handler=cmd_explain)


def _registry() -> Any:
    from sidemesh.config.registry import PluginRegistry

    return PluginRegistry.load()


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def cmd_validate(args: argparse.Namespace) -> int:
    from sidemesh.config.validate import ConfigInvalid, load_file

    registry = _registry()
    results = []
    for path in args.files:
        try:
            config = load_file(path, registry)
        except ConfigInvalid as exc:
            results.append({"file": path, "ok": False,
                            "errors": [e.as_dict() for e in exc.errors]})
            if not args.json:
                count = len(exc.errors)
                print(f"FAIL {path} ({count} error{'s' if count != 1 else ''})")
                for error in exc.errors:
                    print(f"  {error}")
            continue
        routes = sum(len(listener.routes) for listener in config.listeners)
        results.append({"file": path, "ok": True, "listeners": len(config.listeners),
                        "routes": routes})
        if not args.json:
            print(f"ok {path} ({len(config.listeners)} listeners, {routes} routes)")
    if args.json:
        _print_json(results)
    return 0 if all(r["ok"] for r in results) else 1


def cmd_plugins(args: argparse.Namespace) -> int:
    registry = _registry()
    policies = registry.all()
    if args.json:
        _print_json({
            "plugins": [
                {"name": p.name, "distribution": p.distribution, "version": p.version,
                 "hooks": list(p.hooks), "schema_id": p.schema_id}
                for p in policies
            ],
            "load_errors": [
                {"name": e.name, "distribution": e.distribution, "version": e.version,
                 "error": e.message}
                for e in registry.load_errors
            ],
        })
        return 1 if registry.load_errors else 0
    from rich.console import Console
    from rich.table import Table

    # Piped output is not cut at 80 columns: schema ids would fold mid-word.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    if policies:
        table = Table(title="installed sidemesh plugins", title_justify="left")
        for column in ("name", "distribution", "version", "hooks", "schema id"):
            table.add_column(column, overflow="fold")
        for p in policies:
            table.add_row(p.name, p.distribution, p.version, ", ".join(p.hooks) or "-",
                          p.schema_id or "-")
        console.print(table)
    else:
        console.print("no plugins installed (try: pip install 'sidemesh[all]')")
    for error in registry.load_errors:
        console.print(f"[red]error[/red]: {error} ({error.distribution} {error.version})",
                      markup=True)
    return 1 if registry.load_errors else 0


def cmd_schema(args: argparse.Namespace) -> int:
    from sidemesh.config.registry import composed_schema

    registry = _registry()
    if args.plugin is None:
        _print_json(composed_schema(registry))
        return 0
    policy = registry.get(args.plugin)
    if policy is None:
        failure = registry.load_error(args.plugin)
        reason = str(failure) if failure else (
            f"unknown plugin {args.plugin!r} (installed: {', '.join(registry.names()) or 'none'})"
        )
        print(f"sidemesh schema: {reason}", file=sys.stderr)
        return 1
    _print_json(policy.schema)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from sidemesh.config.validate import ConfigInvalid, load_file
    from sidemesh.tools.explain import ExplainError, explain, render_text

    registry = _registry()
    try:
        if args.admin:
            from sidemesh.tools.ops.proxy_config import live_config

            config = live_config(args.admin, registry)
        else:
            config = load_file(args.config, registry)
        result = explain(config, registry, args.method, args.url, args.header)
    except ConfigInvalid as exc:
        print(f"sidemesh explain: {args.config or args.admin} is not a valid config:",
              file=sys.stderr)
        for error in exc.errors:
            print(f"  {error}", file=sys.stderr)
        return 1
    except ExplainError as exc:
        print(f"sidemesh explain: {exc}", file=sys.stderr)
        return 1
    if args.json:
        _print_json(result)
    else:
        print(render_text(result))
    return 0 if result["matched"] else 1
