"""``sidemesh version``: this client's version and request path, each installed
plugin's version and whether its policy runs compiled, and the control plane's version
(its ``GET /healthz`` tells it, without a token)."""

from __future__ import annotations

import argparse
import sys
import sysconfig
from typing import Any

from sidemesh import __version__
from sidemesh.config.registry import PluginRegistry
from sidemesh.control.client import ControlError
from sidemesh.datapath import state
from sidemesh.tools.ops.common import control_client, control_url, print_json, print_table

__all__ = ["main"]

EXT_SUFFIX = str(sysconfig.get_config_var("EXT_SUFFIX"))


def _request_path(cls: type) -> str:
    """``compiled`` when the module defining a policy is a C extension (mypyc's build of
    it, from a platform wheel or a checkout's build), ``interpreted`` otherwise."""
    module = sys.modules.get(cls.__module__)
    return "compiled" if str(getattr(module, "__file__", "")).endswith(EXT_SUFFIX) \
        else "interpreted"


def _control_plane(args: argparse.Namespace) -> dict[str, Any]:
    """``{"url", "version", "store", "status"}``, or ``{"url", "error"}``."""
    try:
        with control_client(args, token=False) as client:
            response = client.request("GET", "/healthz")
            url = client.url
    except ControlError as exc:
        return {"url": control_url(args), "error": str(exc)}
    try:
        body = response.json()
        version = body["version"]
    except (ValueError, KeyError, TypeError):
        # A control plane from before /healthz told its version, or not sidemesh at all.
        return {"url": url, "error": f"{url}/healthz answered {response.status_code} without "
                                     "a version (sidemesh before 0.3, or not a control plane)"}
    return {"url": url, "version": version, "store": body.get("store"),
            "status": body.get("status")}


def main(args: argparse.Namespace) -> int:
    registry = PluginRegistry.load()
    answer: dict[str, Any] = {
        "client": {"version": __version__,
                   "request_path": "compiled" if state().active else "interpreted"},
        "plugins": [{"name": p.name, "distribution": p.distribution, "version": p.version,
                     "request_path": _request_path(p.cls)} for p in registry.all()],
    }
    if not args.client:
        answer["control_plane"] = _control_plane(args)
    control = answer.get("control_plane", {})
    failed = "error" in control
    if args.json:
        print_json(answer)
        return 1 if failed else 0
    print(f"client version: {__version__}" + (
        "" if args.short else f" (request path {answer['client']['request_path']})"))
    if "version" in control:
        extra = "" if args.short else f" at {control['url']}, store {control['store']}" + (
            "" if control["status"] == "ok" else f", {control['status']}")
        print(f"control plane version: {control['version']}{extra}")
    if not args.short:
        if answer["plugins"]:
            print("plugins:")
            print_table(("NAME", "DISTRIBUTION", "VERSION", "REQUEST PATH"), (
                (p["name"], p["distribution"], p["version"], p["request_path"])
                for p in answer["plugins"]))
        else:
            print("plugins: none installed")
        for error in registry.load_errors:
            print(f"plugin error: {error}", file=sys.stderr)
    if failed:
        print(f"sidemesh version: {control['error']} (--client: this client's versions "
              "only)", file=sys.stderr)
    return 1 if failed else 0
