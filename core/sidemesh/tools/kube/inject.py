"""The sidecar added to the pod templates of Kubernetes resources.

Injecting is idempotent: whatever a previous injection added (the containers and
volumes named in :mod:`~sidemesh.tools.kube.spec`) is taken out first and added again
from the options given now, so injecting twice gives what injecting once gives, and
injecting with a new ``--image`` upgrades the sidecar. Everything else of a resource is
left as it was, in its order."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sidemesh.tools.kube.spec import (
    INIT,
    PROXY,
    VOLUMES,
    Options,
    init_container,
    proxy_container,
    volumes,
)

__all__ = ["INJECT", "SERVICE", "STATUS", "InjectError", "Outcome", "inject"]

#: ``"false"`` on a pod template (annotation or label) leaves the pod alone, as Istio's
#: ``sidecar.istio.io/inject``.
INJECT = "sidemesh.dev/inject"
#: Set on every injected pod template.
STATUS = "sidemesh.dev/status"
#: The service the sidecar serves, when the pod's labels do not say it.
SERVICE = "sidemesh.dev/service"

#: Where each kind keeps its pod template.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}

#: A Kubernetes name (DNS-1123 label), as the token Secret's name needs.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class InjectError(ValueError):
    """A resource that cannot be injected; the message names it and the field."""


@dataclass(frozen=True)
class Outcome:
    resource: str
    #: The sidecar's service, or ``None`` when the resource was left alone.
    service: str | None
    note: str | None = None


def inject(doc: Any, options: Options) -> Iterator[Outcome]:
    """Inject the sidecar into ``doc`` (changed in place) and the items of a ``List``;
    one outcome per resource with a pod template."""
    if not isinstance(doc, dict):
        return
    kind = doc.get("kind")
    if kind == "List" or (isinstance(kind, str) and kind.endswith("List")):
        for item in doc.get("items") or []:
            yield from inject(item, options)
        return
    if kind not in TEMPLATES:
        return
    metadata = doc.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    resource = f"{kind}/{metadata.get('name') or metadata.get('generateName') or '?'}"
    template: Any = doc
    for key in TEMPLATES[str(kind)]:
        template = template.get(key) if isinstance(template, dict) else None
    if not isinstance(template, dict):
        raise InjectError(f"{resource}: no {'.'.join(TEMPLATES[str(kind)])}")
    yield _inject_template(template, resource, metadata.get("name"), options,
                           job=kind in ("Job", "CronJob"))


def _field(template: dict[str, Any], key: str) -> dict[str, Any]:
    metadata = template.get("metadata")
    value = metadata.get(key) if isinstance(metadata, dict) else None
    return value if isinstance(value, dict) else {}


def _service(template: dict[str, Any], resource: str, name: Any) -> str:
    annotations, labels = _field(template, "annotations"), _field(template, "labels")
    service = (annotations.get(SERVICE) or labels.get("app.kubernetes.io/name")
               or labels.get("app") or name)
    if not isinstance(service, str) or not _DNS_LABEL.fullmatch(service):
        raise InjectError(
            f"{resource}: service name {service!r} (from the pod's app label, else the "
            f"resource's name) is not a lower-case DNS label; set the {SERVICE} annotation")
    return service


def _replace(spec: dict[str, Any], key: str, names: tuple[str, ...],
             new: list[dict[str, Any]], first: bool = False) -> None:
    """``spec[key]`` without the items named ``names`` (an earlier injection's), with
    ``new`` added (before the others when ``first``). An existing key keeps its place,
    so injecting again moves nothing; a list that held only ours goes with them."""
    items = spec.get(key)
    items = items if isinstance(items, list) else []
    kept = [item for item in items if not (isinstance(item, dict) and item.get("name") in names)]
    result = new + kept if first else kept + new
    if result or (key in spec and not items):
        spec[key] = result
    else:
        spec.pop(key, None)


def _inject_template(template: dict[str, Any], resource: str, name: Any, options: Options,
                     job: bool) -> Outcome:
    for where in ("annotations", "labels"):
        if str(_field(template, where).get(INJECT, "")).lower() == "false":
            return Outcome(resource, None, f"{INJECT}: \"false\" ({where[:-1]})")
    spec = template.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("containers"), list):
        raise InjectError(f"{resource}: the pod template has no spec.containers list")
    if spec.get("hostNetwork") is True:
        # The proxy's ports would be the node's, shared with every other such pod.
        return Outcome(resource, None, "hostNetwork: true")
    service = _service(template, resource, name)

    proxy = proxy_container(service, options)
    inits = [init_container(options)] if options.capture else []
    _replace(spec, "containers", (PROXY,), [] if options.native else [proxy])
    # The capture rules are in place before the proxy, and both before the app's.
    _replace(spec, "initContainers", (INIT, PROXY),
             [*inits, proxy] if options.native else inits, first=True)
    _replace(spec, "volumes", VOLUMES, volumes(service, options))

    if not isinstance(template.get("metadata"), dict):
        template["metadata"] = {}
    if not isinstance(template["metadata"].get("annotations"), dict):
        template["metadata"]["annotations"] = {}
    annotations = template["metadata"]["annotations"]
    annotations[STATUS] = "injected"
    if not any(key.startswith("prometheus.io/") for key in annotations):
        annotations.update({"prometheus.io/scrape": "true",
                            "prometheus.io/port": str(proxy["ports"][0]["containerPort"]),
                            "prometheus.io/path": "/stats/prometheus"})
    note = None
    if job and not options.native:
        note = ("the proxy keeps running after the job's containers exit, so the Job never "
                "completes; inject with --native-sidecar (Kubernetes 1.29+)")
    return Outcome(resource, service, note)
