"""``sidemesh import istio``: options, the report, and writing or pushing the configs."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from sidemesh.config.build import control_urls
from sidemesh.config.registry import PluginRegistry
from sidemesh.config.validate import validate
from sidemesh.tools.istio.mesh import Imported, import_istio
from sidemesh.tools.istio.resources import Options

__all__ = ["main", "options_from"]

PROG = "sidemesh import istio"


def _address(value: str, what: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what} {value!r} is not host:port")
    return value


def _endpoints(items: list[str]) -> dict[tuple[str, str | None], list[str]]:
    endpoints: dict[tuple[str, str | None], list[str]] = {}
    for item in items:
        key, sep, addresses = item.partition("=")
        host, _, subset = key.partition("/")
        if not sep or not host or not addresses:
            raise ValueError(f"--endpoint {item!r}: give HOST[/SUBSET]=HOST:PORT[,HOST:PORT]")
        for address in addresses.split(","):
            # A port may be left out: the host's port is used.
            if ":" in address.rsplit("]", 1)[-1]:
                _address(address, "--endpoint")
            endpoints.setdefault((host, subset or None), []).append(address)
    return endpoints


def options_from(args: argparse.Namespace) -> Options:
    """The importer's options from the command line.

    :raises ValueError: naming the option that is wrong.
    """
    apps: dict[str, str] = {}
    app = "localhost:8080"
    for item in args.app:
        service, sep, address = item.rpartition("=")
        if sep:
            apps[service] = _address(address, "--app")
        else:
            app = _address(address, "--app")
    if args.control is not None:
        control_urls(args.control)
    return Options(
        namespace=args.namespace, trust_domain=args.trust_domain, domain=args.cluster_domain,
        root_namespace=args.root_namespace, inbound=_address(args.inbound, "--inbound"),
        outbound=_address(args.outbound, "--outbound"),
        admin=None if args.admin == "off" else _address(args.admin, "--admin"),
        app=app, apps=apps, port=args.port, endpoints=_endpoints(args.endpoint),
        services=tuple(args.service))


def _invalid(imported: Imported, registry: PluginRegistry) -> dict[str, list[str]]:
    """Errors of the configs as ``sidemesh validate`` would find them (a plugin the
    configs use that is not installed here, say)."""
    return {name: [str(e) for e in errors] for name, doc in imported.configs.items()
            if (errors := validate(doc, registry))}


class _Dumper(yaml.SafeDumper):
    """No anchors and aliases for values used twice: sidemesh configs refuse them."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _write(imported: Imported, out: Path, sources: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    header = f"# Imported from Istio by `{PROG}` ({', '.join(Path(s).name for s in sources)})."
    for name, doc in imported.configs.items():
        path = out / f"{name}.yaml"
        path.write_text(header + "\n" + yaml.dump(doc, Dumper=_Dumper, sort_keys=False))
        print(f"{PROG}: wrote {path}", file=sys.stderr)


def _admin_token(args: argparse.Namespace) -> str:
    if args.admin_token_file:
        try:
            token = Path(args.admin_token_file).read_text().strip()
        except OSError as exc:
            raise ValueError(f"admin token file {args.admin_token_file}: "
                             f"{exc.strerror or exc}") from None
    else:
        token = os.environ.get("SIDEMESH_ADMIN_TOKEN", "").strip()
    if not token:
        raise ValueError("--control needs the admin token: --admin-token-file FILE or "
                         "$SIDEMESH_ADMIN_TOKEN")
    return token


def _put(client: httpx.Client, urls: tuple[str, ...], path: str,
         doc: dict[str, Any]) -> httpx.Response:
    """PUT to the first replica that answers (a connection error or a 5xx moves on)."""
    failure = ""
    for url in urls:
        try:
            response = client.put(url + path, json=doc)
        except httpx.HTTPError as exc:
            failure = f"{url}: {type(exc).__name__}: {exc}"
            continue
        if response.status_code < 500:
            return response
        failure = f"{url} answered {response.status_code}"
    raise ValueError(f"control plane unreachable ({failure})")


def _push(imported: Imported, args: argparse.Namespace) -> int:
    token = _admin_token(args)
    urls = control_urls(args.control)
    verify: Any = ssl.create_default_context(cafile=args.control_ca) if args.control_ca \
        else True
    services = [doc["node"]["service"] for doc in imported.configs.values()]
    clash = {s for s in services if services.count(s) > 1}
    if clash:
        raise ValueError(f"services {', '.join(sorted(clash))} are in several namespaces: the "
                         "control plane keeps one config per service name")
    failed = 0
    with httpx.Client(timeout=30, verify=verify,
                      headers={"authorization": f"Bearer {token}"}) as client:
        for doc in imported.configs.values():
            service = doc["node"]["service"]
            response = _put(client, urls, f"/v1/services/{service}/config", doc)
            try:
                answer = response.json()
            except ValueError:
                answer = {"error": response.text[:200]}
            if response.status_code != 200:
                failed += 1
                print(f"{PROG}: {service}: the control plane answered "
                      f"{response.status_code}: {answer.get('error', answer)}", file=sys.stderr)
                for error in answer.get("errors") or []:
                    print(f"  {error.get('path') or '(document)'}: {error.get('message')}",
                          file=sys.stderr)
                continue
            state = "unchanged" if answer.get("unchanged") else "stored"
            print(f"{PROG}: {service}: version {answer.get('version')} {state}",
                  file=sys.stderr)
    return 1 if failed else 0


def main(args: argparse.Namespace) -> int:
    options: Options = args.options
    imported = import_istio(args.files, options)
    report = imported.report
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    for loss in report.lost:
        print(loss)
    invalid = _invalid(imported, PluginRegistry.load())
    for name, errors in invalid.items():
        print(f"{PROG}: the config of {name} is not valid, not written:", file=sys.stderr)
        for error in errors:
            print(f"  {error}", file=sys.stderr)
        del imported.configs[name]
    if not imported.configs:
        print(f"{PROG}: no config to write: the input names no service of the mesh; name "
              "the sidecars that call its hosts with --service NAME", file=sys.stderr)
        return 1
    if report.lost and not args.allow_partial:
        count = len(report.lost)
        print(f"{PROG}: {count} field{'s' if count != 1 else ''} could not be translated; "
              "nothing written (--allow-partial writes the configs anyway)", file=sys.stderr)
        return 1
    try:
        status = _push(imported, args) if args.control else 0
    except (ValueError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    if args.out:
        _write(imported, Path(args.out), args.files)
        with_mtls = sorted(name for name, doc in imported.configs.items()
                           if '"name": "mtls"' in json.dumps(doc))
        if with_mtls:
            print(f"note: {', '.join(with_mtls)} use mTLS: run those sidecars under the control "
                  "plane (sidemesh proxy --control URL), whose CA signs their certificates, or "
                  "give the mtls entries cert_file, key_file and bundle_file", file=sys.stderr)
    return 1 if invalid else status
