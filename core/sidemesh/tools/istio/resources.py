"""Istio YAML in: the resources of the input files, what was lost translating them, and
the names Istio gives services (``reviews``, ``reviews.prod.svc.cluster.local``)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidemesh.api.durations import format_duration, parse_duration
from sidemesh.config.errors import ConfigInvalid
from sidemesh.config.source import MAX_CONFIG_BYTES, parse_documents

__all__ = [
    "IMPORTED",
    "Host",
    "Options",
    "Report",
    "Resource",
    "duration",
    "labels_service",
    "load",
    "mapping",
]

#: The kinds this importer translates, with the API group each belongs to.
IMPORTED = {
    "VirtualService": "networking.istio.io",
    "DestinationRule": "networking.istio.io",
    "ServiceEntry": "networking.istio.io",
    "Gateway": "networking.istio.io",
    "PeerAuthentication": "security.istio.io",
    "AuthorizationPolicy": "security.istio.io",
}


@dataclass(frozen=True)
class Options:
    """What the input does not say and a sidecar config needs (see ``--help``)."""

    namespace: str = "default"
    trust_domain: str = "cluster.local"
    domain: str = "cluster.local"
    root_namespace: str = "istio-system"
    inbound: str = "0.0.0.0:15006"
    outbound: str = "127.0.0.1:15001"
    admin: str | None = "127.0.0.1:15000"
    app: str = "localhost:8080"
    apps: dict[str, str] = field(default_factory=dict)
    port: int = 80
    #: (host, subset or None) -> addresses given with --endpoint.
    endpoints: dict[tuple[str, str | None], list[str]] = field(default_factory=dict)
    services: tuple[str, ...] = ()


@dataclass
class Resource:
    """One Istio resource: where it was read, and its spec."""

    kind: str
    name: str
    namespace: str
    spec: dict[str, Any]
    file: str
    doc: int

    @property
    def ref(self) -> str:
        return f"{self.file}:{self.doc}: {self.kind}/{self.name}"


@dataclass(frozen=True)
class Loss:
    where: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where} {self.path}: {self.reason}" if self.path else \
            f"{self.where}: {self.reason}"


@dataclass
class Report:
    """What could not be translated (``lost``: the import is partial) and what the
    importer assumed (``notes``: nothing of the input is lost)."""

    lost: list[Loss] = field(default_factory=list)
    notes: list[Loss] = field(default_factory=list)

    def loss(self, resource: Resource | str, path: str, reason: str) -> None:
        where = resource.ref if isinstance(resource, Resource) else resource
        item = Loss(where, path, reason)
        if item not in self.lost:
            self.lost.append(item)

    def note(self, resource: Resource | str, path: str, reason: str) -> None:
        where = resource.ref if isinstance(resource, Resource) else resource
        item = Loss(where, path, reason)
        if item not in self.notes:
            self.notes.append(item)

    def unknown(self, resource: Resource, path: str, value: Any,
                known: Iterable[str]) -> None:
        """Every key of mapping ``value`` at ``path`` that is not in ``known``."""
        if not isinstance(value, dict):
            return
        for key in value:
            if key not in known:
                self.loss(resource, f"{path}.{key}" if path else key,
                          "not translated: sidemesh has no equivalent")


def mapping(value: Any) -> dict[str, Any]:
    """``value`` when it is a mapping, else an empty one (YAML may hold anything)."""
    return value if isinstance(value, dict) else {}


def duration(text: Any, resource: Resource, path: str, report: Report) -> str | None:
    """An Istio duration (Go's syntax, as ours) normalised, or ``None`` with the loss."""
    try:
        return format_duration(parse_duration(str(text)))
    except ValueError as exc:
        report.loss(resource, path, f"{text!r} is not a duration ({exc})")
        return None


_SHORT = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


@dataclass(frozen=True)
class Host:
    """A host as Istio names it, resolved: a service of the mesh (``service``,
    ``namespace``) or another name (an external host, a wildcard)."""

    name: str
    service: str | None = None
    namespace: str | None = None

    @classmethod
    def parse(cls, host: str, namespace: str, options: Options) -> Host:
        host = host.lower()
        if _SHORT.match(host):
            # A short name is the service of that name in the resource's namespace.
            return cls(f"{host}.{namespace}.svc.{options.domain}", host, namespace)
        suffix = f".svc.{options.domain}"
        if host.endswith(suffix):
            parts = host[: -len(suffix)].split(".")
            if len(parts) == 2 and all(_SHORT.match(p) for p in parts):
                return cls(host, parts[0], parts[1])
        return cls(host)

    def short(self, default_namespace: str) -> str:
        """How configs name it: ``reviews`` in the default namespace, ``reviews.prod``
        in another, the host name outside the mesh."""
        if self.service is None:
            return self.name
        return self.service if self.namespace == default_namespace else \
            f"{self.service}.{self.namespace}"

    @property
    def mesh(self) -> bool:
        return self.service is not None

    def aliases(self, client_namespace: str | None, options: Options) -> list[str]:
        """The Host headers that name this host, as the virtual-host domains Istio
        gives a sidecar: the short name only from the service's own namespace."""
        if self.service is None:
            return [self.name]
        names = [self.name, f"{self.service}.{self.namespace}.svc",
                 f"{self.service}.{self.namespace}"]
        if client_namespace == self.namespace:
            names.insert(0, self.service)
        return names


def labels_service(labels: Any) -> str | None:
    """The service a workload selector's labels name (``app``, as bookinfo labels)."""
    if not isinstance(labels, dict):
        return None
    for key in ("app", "app.kubernetes.io/name", "service.istio.io/canonical-name"):
        value = labels.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _documents(path: str, report: Report) -> Iterator[tuple[int, Any]]:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        report.loss(path, "", f"cannot read: {exc.strerror or exc}")
        return
    try:
        documents = parse_documents(data, path)
    except ConfigInvalid as exc:
        for error in exc.errors:
            report.loss(error.message, "", "the file is not imported")
        return
    for number, document in enumerate(documents, 1):
        if isinstance(document, dict) and document.get("kind") == "List":
            # `kubectl get -o yaml` writes a List of the resources.
            for item in document.get("items") or []:
                yield number, item
        else:
            yield number, document


def load(paths: Iterable[str], options: Options, report: Report) -> list[Resource]:
    """The resources of the files, in order. Anything else is reported: a Kubernetes
    resource Istio does not define is noted, an Istio kind not imported is a loss."""
    resources: list[Resource] = []
    for path in paths:
        file = Path(path).name
        for number, document in _documents(path, report):
            where = f"{file}:{number}"
            if not isinstance(document, dict) or not isinstance(document.get("kind"), str):
                report.loss(where, "", "not a Kubernetes resource (no apiVersion and kind); "
                            "a fragment of one cannot be imported on its own")
                continue
            kind, api = document["kind"], str(document.get("apiVersion", ""))
            metadata = mapping(document.get("metadata"))
            name = str(metadata.get("name") or "unnamed")
            if ".istio.io/" not in api:
                report.note(f"{where}: {kind}/{name}", "", "not an Istio resource: skipped")
                continue
            if IMPORTED.get(kind) != api.split("/")[0]:
                report.loss(f"{where}: {kind}/{name}", "",
                            f"{api} {kind} is not imported: sidemesh has no equivalent")
                continue
            resources.append(Resource(
                kind, name, str(metadata.get("namespace") or options.namespace),
                mapping(document.get("spec")), file, number))
    return resources
