"""Clusters: one per destination host and port, with the host's DestinationRule policy
and endpoints from --endpoint, a ServiceEntry, or the host's DNS name; and
ServiceEntry -> the hosts it declares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sidemesh.tools.istio.model import Cluster, TrafficPolicy, unique_name
from sidemesh.tools.istio.resources import Host, Options, Report, Resource

__all__ = ["ClusterTable", "Entry"]

_HTTP = {"HTTP", "HTTP2", "GRPC", "GRPC-WEB"}


@dataclass
class Entry:
    """What a ServiceEntry says of one of its hosts."""

    resource: Resource
    host: Host
    port: int | None = None
    #: (address, port by port name, labels) of the entry's endpoints.
    endpoints: list[tuple[str, dict[str, int], dict[str, str]]] = field(default_factory=list)
    port_name: str = ""
    target_port: int | None = None


def _ports(resource: Resource, report: Report) -> tuple[int | None, str, int | None]:
    chosen: tuple[int | None, str, int | None] = (None, "", None)
    for i, port in enumerate(resource.spec.get("ports") or []):
        number, protocol = port.get("number"), str(port.get("protocol", "")).upper()
        path = f"spec.ports[{i}]"
        if protocol not in _HTTP:
            report.loss(resource, path, f"port {number} ({protocol or 'no protocol'}): sidemesh "
                        "proxies HTTP only")
        elif chosen[0] is not None:
            report.loss(resource, path, f"port {number}: sidemesh routes a host by its name, "
                        f"to one port; requests go to port {chosen[0]}")
        else:
            if protocol != "HTTP":
                report.note(resource, path, f"{protocol}: sidemesh speaks HTTP/1.1 to it")
            chosen = (int(number), str(port.get("name", "")), port.get("targetPort"))
    return chosen


def service_entry(resource: Resource, options: Options, report: Report) -> list[Entry]:
    spec = resource.spec
    port, port_name, target = _ports(resource, report)
    endpoints = []
    for i, endpoint in enumerate(spec.get("endpoints") or []):
        address = str(endpoint.get("address", ""))
        if not address or address.startswith("unix://"):
            report.loss(resource, f"spec.endpoints[{i}].address",
                        f"{address or 'no address'}: sidemesh connects over TCP only")
            continue
        labels = {str(k): str(v) for k, v in (endpoint.get("labels") or {}).items()}
        ports = {str(k): int(v) for k, v in (endpoint.get("ports") or {}).items()}
        endpoints.append((address, ports, labels))
        report.unknown(resource, f"spec.endpoints[{i}]", endpoint,
                       ("address", "ports", "labels", "serviceAccount"))
    if spec.get("resolution") == "NONE":
        report.note(resource, "spec.resolution", "NONE: requests go to the host name asked for")
    if spec.get("addresses"):
        report.note(resource, "spec.addresses", "apps send to the outbound listener with the "
                    "host's name in Host, so no address is needed")
    for key, reason in (("workloadSelector", "WorkloadEntry instances are not imported"),
                        ("subjectAltNames", "sidemesh verifies the host's service identity "
                                            "only with ISTIO_MUTUAL")):
        if spec.get(key):
            report.loss(resource, f"spec.{key}", reason)
    export = spec.get("exportTo")
    if export and "*" not in export:
        report.loss(resource, "spec.exportTo", "every namespace's sidecars get the host")
    report.unknown(resource, "spec", spec, (
        "hosts", "ports", "endpoints", "resolution", "location", "addresses",
        "workloadSelector", "subjectAltNames", "exportTo"))
    entries = []
    for i, name in enumerate(spec.get("hosts") or []):
        host = Host.parse(str(name), resource.namespace, options)
        if "*" in host.name:
            report.loss(resource, f"spec.hosts[{i}]", f"{name}: sidemesh needs each host's name "
                        "to send to it")
            continue
        entries.append(Entry(resource, host, port, list(endpoints), port_name, target))
    return entries


class ClusterTable:
    """Every cluster of the mesh, created as routes name their hosts."""

    def __init__(self, options: Options, report: Report) -> None:
        self.options = options
        self.report = report
        self.policies: dict[str, TrafficPolicy] = {}
        self.entries: dict[str, Entry] = {}
        self.clusters: dict[tuple[str, int], Cluster] = {}
        #: ports routes name for each host: a route that names none means the one named.
        self.named: dict[str, set[int]] = {}

    def add_policy(self, host: Host, policy: TrafficPolicy) -> None:
        first = self.policies.get(host.name)
        if first is not None:
            self.report.loss(policy.resource, "spec.host", f"{host.name} already has "
                             f"DestinationRule {first.resource.name}; as Istio, the first wins")
            return
        self.policies[host.name] = policy

    def add_entry(self, entry: Entry) -> None:
        if entry.host.name in self.entries:
            self.report.loss(entry.resource, "spec.hosts", f"{entry.host.name} is declared "
                             "by an earlier ServiceEntry: the first is used")
            return
        self.entries[entry.host.name] = entry

    def policy(self, host: Host) -> TrafficPolicy | None:
        exact = self.policies.get(host.name)
        if exact is not None:
            return exact
        wildcards = [name for name in self.policies if name.startswith("*")
                     and host.name.endswith(name[1:])]
        return self.policies[max(wildcards, key=len)] if wildcards else None

    def get(self, host: Host, port: int | None = None) -> Cluster:
        entry = self.entries.get(host.name)
        named = self.named.get(host.name, set())
        if port is None and entry is not None and entry.port:
            port = entry.port
        elif port is None:
            port = next(iter(named)) if len(named) == 1 else self.options.port
        key = (host.name, port)
        if key not in self.clusters:
            self.clusters[key] = Cluster(host, port, self.policy(host))
        return self.clusters[key]

    def unused_wildcards(self) -> None:
        for name, policy in self.policies.items():
            if name.startswith("*") and not any(c.policy is policy
                                                for c in self.clusters.values()):
                self.report.loss(policy.resource, "spec.host", f"{name} matches no host "
                                 "imported: its policy applies to nothing")

    def finish(self) -> None:
        """Name every cluster and give it endpoints."""
        taken: set[str] = {"local"}
        ports: dict[str, int] = {}
        for host, _ in self.clusters:
            ports[host] = ports.get(host, 0) + 1
        for (name, port), cluster in sorted(self.clusters.items(), key=lambda item: item[0]):
            base = cluster.host.short(self.options.namespace).replace("*", "wildcard")
            cluster.name = unique_name(f"{base}-{port}" if ports[name] > 1 else base, taken)
            cluster.endpoints = self._endpoints(cluster)

    def _given(self, cluster: Cluster) -> dict[str | None, list[str]]:
        given: dict[str | None, list[str]] = {}
        for (host, subset), addresses in self.options.endpoints.items():
            if Host.parse(host, self.options.namespace, self.options).name == cluster.host.name:
                given.setdefault(subset, []).extend(addresses)
        return given

    def _endpoints(self, cluster: Cluster) -> list[dict[str, Any]]:
        given = self._given(cluster)
        where = f"--endpoint {cluster.host.service or cluster.host.name}"
        endpoints: dict[str, dict[str, Any]] = {}

        def add(address: str, labels: dict[str, str]) -> None:
            if ":" not in address.rsplit("]", 1)[-1]:
                address = f"{address}:{cluster.port}"
            endpoints.setdefault(address, {"address": address, "labels": {}})["labels"].update(
                labels)

        for subset, addresses in given.items():
            labels = cluster.subsets.get(subset, {}) if subset is not None else {}
            if subset is not None and subset not in cluster.subsets:
                self.report.loss(where, "", f"{cluster.host.name} has no subset {subset!r} "
                                 "(a DestinationRule defines the subsets)")
                continue
            for address in addresses:
                add(address, labels)
        entry = self.entries.get(cluster.host.name)
        if not given and entry is not None and entry.endpoints:
            for address, by_name, labels in entry.endpoints:
                # An endpoint's own port and targetPort belong to the entry's HTTP port.
                port = (by_name.get(entry.port_name) or entry.target_port or cluster.port) \
                    if cluster.port == entry.port else cluster.port
                add(f"{address}:{port}", labels)
        missing = [s for s in sorted(cluster.used)
                   if not any(all(e["labels"].get(k) == v for k, v in cluster.subsets[s].items())
                              for e in endpoints.values())]
        if missing:
            self.report.loss(where, "", f"no endpoint of {cluster.host.name} is in subset "
                             f"{', '.join(missing)}: its traffic goes to placeholder addresses "
                             f"that do not resolve; give them as {where}/SUBSET=HOST:PORT")
            for subset in missing:
                add(f"{subset}.{cluster.host.name}:{cluster.port}", cluster.subsets[subset])
        if not endpoints:
            add(f"{cluster.host.name}:{cluster.port}", {})
            if cluster.host.mesh:
                self.report.note(where, "", f"no endpoints given: {cluster.host.name}:"
                                 f"{cluster.port}, the Kubernetes service's name")
        return [e if e["labels"] else {"address": e["address"]} for e in endpoints.values()]
