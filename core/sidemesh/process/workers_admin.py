"""The admin API and status port of ``--concurrency N``: one of each, in the parent, with
every answer summed over the workers (as Envoy's admin shows one set of stats for all
its worker threads).

Counters and histograms add up. Gauges add up too (requests in flight, open
connections), except those every worker reports alike (the build, the applied config,
the ejected endpoints they share), which are taken once.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from sidemesh.config.registry import PluginRegistry
from sidemesh.datapath.messages import Response
from sidemesh.process.admin import plugins_body
from sidemesh.process.endpoints import Endpoint, EndpointServer, bytes_answer
from sidemesh.process.workers import WorkerGroup

__all__ = ["WorkersAdmin", "WorkersStatus", "merge_clusters", "merge_metrics"]

#: gauges each worker reports with the same value: the merged page has it once.
SAME_IN_EVERY_WORKER = frozenset({
    "sidemesh_build_info", "sidemesh_config_info", "sidemesh_circuit_ejected_endpoints",
    "python_info", "process_max_fds",
})
#: ``/clusters`` fields every worker reports alike (shared state): the largest is kept.
_HIGHEST = frozenset({"ejection_count", "ejection_seconds_left", "ejected_until"})


class _Merged(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def merge_metrics(texts: list[str]) -> bytes:
    """The Prometheus pages of the workers as one page."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation,
                                                        family.type, family.unit)
                values[family.name] = {}
            once = family.type == "info" or family.name in SAME_IN_EVERY_WORKER
            seen = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = seen.get(key)
                if old is None:
                    seen[key] = sample.value
                elif sample.name.endswith("_created"):
                    seen[key] = min(old, sample.value)  # when the first worker made it
                else:
                    seen[key] = max(old, sample.value) if once else old + sample.value
    for name, merged in families.items():
        for (sample_name, labels), value in values[name].items():
            merged.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(families.values())))
    return generate_latest(registry)


def _merge(a: Any, b: Any, field: str = "") -> Any:
    if isinstance(a, bool) and isinstance(b, bool):
        return a and b if field == "healthy" else a or b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return max(a, b) if field in _HIGHEST else a + b
    if isinstance(a, dict) and isinstance(b, dict):
        if field in ("subsets", "labels"):
            return a
        return {k: _merge(a[k], b[k], k) if k in a and k in b else a.get(k, b.get(k))
                for k in {**a, **b}}
    if isinstance(a, list) and isinstance(b, list) and field == "endpoints":
        return _merge_listed(a, b, "address")
    if field in _HIGHEST:
        return max(x for x in (a, b) if x is not None) if a is not None or b is not None \
            else None
    return a


def _merge_listed(a: list[dict[str, Any]], b: list[dict[str, Any]], key: str
                  ) -> list[dict[str, Any]]:
    merged = {item[key]: item for item in a}
    for item in b:
        merged[item[key]] = _merge(merged[item[key]], item) if item[key] in merged else item
    return list(merged.values())


def merge_clusters(answers: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The workers' ``/clusters`` as one: counts summed, ejections (shared) once."""
    merged: list[dict[str, Any]] = []
    for clusters in answers:
        merged = _merge_listed(merged, clusters, "name")
    return merged


def _requests(text: str) -> int:
    return int(sum(s.value for f in text_string_to_metric_families(text)
                   if f.name == "sidemesh_requests" for s in f.samples))


def admin_routes(group: WorkerGroup, registry: PluginRegistry) -> dict[str, Endpoint]:
    async def ready() -> Response:
        reason = "draining" if group.draining else group.waiting_for()
        if reason is None and group.snapshot is not None:
            return Response.json(200, {"ready": True, "version": group.snapshot.version})
        return Response.json(503, {"ready": False, "reason": reason})

    async def config_dump() -> Response:
        applied = group.snapshot
        if applied is None:
            return Response.json(200, {"version": None, "source": None, "config": None})
        return Response.json(200, {"version": applied.version, "source": applied.source,
                                   "applied_at": applied.applied_at,
                                   "config": applied.config.raw, "workers": len(group.workers)})

    async def clusters() -> Response:
        answers = await group.ask("clusters")
        return Response.json(200, {"clusters": merge_clusters([a["clusters"] for a in answers])})

    async def plugins() -> Response:
        return Response.json(200, plugins_body(registry))

    async def metrics() -> Response:
        return await metrics_response(group)

    async def workers() -> Response:
        served = {a["worker"]: _requests(a["text"]) for a in await group.ask("metrics")}
        active = {a["worker"]: sum(c["active_requests"] for c in a["clusters"])
                  for a in await group.ask("clusters")}
        return Response.json(200, {"workers": [
            {**w, "requests": served.get(w["worker"]), "active_requests": active.get(w["worker"])}
            for w in group.describe()]})

    return {"/ready": ready, "/config_dump": config_dump, "/clusters": clusters,
            "/plugins": plugins, "/metrics": metrics, "/workers": workers}


async def metrics_response(group: WorkerGroup) -> Response:
    texts = [a["text"] for a in await group.ask("metrics")]
    return bytes_answer(merge_metrics(texts), CONTENT_TYPE_LATEST)


def status_routes(group: WorkerGroup) -> dict[str, Endpoint]:
    async def ready() -> Response:
        if not group.draining and group.waiting_for() is None:
            return Response.text(200, "ready\n")
        return Response.text(503, "not ready\n")

    async def metrics() -> Response:
        return await metrics_response(group)

    return {"/healthz/ready": ready, "/stats/prometheus": metrics}


class WorkersAdmin(EndpointServer):
    def __init__(self, group: WorkerGroup, registry: PluginRegistry, host: str,
                 port: int) -> None:
        super().__init__(admin_routes(group, registry), host, port, "admin API")


class WorkersStatus(EndpointServer):
    def __init__(self, group: WorkerGroup, host: str, port: int) -> None:
        super().__init__(status_routes(group), host, port, "status port")
