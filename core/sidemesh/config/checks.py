"""Checks a JSON Schema cannot express: references between sections, uniqueness,
regexes, and everything about the plugins a chain names.

Every function here works on a document that may also have schema errors, so it looks
before it touches (a ``listeners`` that is a string yields no checks, not a crash).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError

from sidemesh.api.durations import DURATION_PATTERN, parse_duration
from sidemesh.config.build import destination, split_address
from sidemesh.config.errors import ConfigError, did_you_mean, format_path, schema_error
from sidemesh.config.registry import PluginRegistry, PolicyType
from sidemesh.datapath.logformat import FormatError, compile_format, compile_log_format
from sidemesh.datapath.model import AccessLogConfig
from sidemesh.datapath.regex import RegexError, compile_regex

__all__ = ["ChainSite", "SchemaValidator", "chain_sites", "plugin_errors", "semantic_errors"]

Path = tuple[str | int, ...]
_WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


def _anchored_pattern(
    validator: Any, pattern: str, instance: Any, schema: Any
) -> Iterator[ValidationError]:
    # jsonschema applies "pattern" with Python's re.search, where "$" also matches before
    # a trailing newline; ECMA-262 (what JSON Schema means) does not. "reviews\n" is not
    # a valid name.
    if not isinstance(instance, str):
        return
    if pattern == DURATION_PATTERN:
        # The parser also knows what a regex cannot say (Go's longest duration), for the
        # core's keys and every plugin's alike.
        try:
            parse_duration(instance)
        except ValueError as exc:
            yield ValidationError(str(exc))
        return
    if re.search(pattern, instance) is None or (
        pattern.endswith("$") and instance.endswith("\n")
    ):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


#: Draft 2020-12 with ECMA-262 semantics for ``pattern``'s ``$``; used for the core
#: schema and every plugin schema.
SchemaValidator: Any = validators.extend(Draft202012Validator, {"pattern": _anchored_pattern})


def _items(doc: Any, key: str) -> Iterator[tuple[int, dict[str, Any]]]:
    value = doc.get(key) if isinstance(doc, dict) else None
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, dict):
                yield index, item


def _err(path: Path, message: str, rule: str) -> ConfigError:
    return ConfigError(format_path(path), message, rule=rule)


def _unique(
    items: Sequence[tuple[Path, Any]], what: str, rule: str = "unique_name"
) -> list[ConfigError]:
    errors = []
    first: dict[Any, Path] = {}
    for path, value in items:
        if not isinstance(value, str | tuple):
            continue
        if value in first:
            shown = value if isinstance(value, str) else ":".join(map(str, value))
            errors.append(_err(path, f"duplicate {what} {shown!r} (first at "
                                     f"{format_path(first[value])})", rule))
        else:
            first[value] = path
    return errors


def _positive_duration(path: Path, value: Any) -> list[ConfigError]:
    # A value that is no duration is the schema's error; this adds what it cannot say.
    try:
        seconds = parse_duration(value)
    except ValueError:
        return []
    if seconds <= 0:
        return [_err(path, f"{path[-1]} must be greater than 0s", "duration")]
    return []


def _regex_error(path: Path, pattern: Any) -> list[ConfigError]:
    if not isinstance(pattern, str):
        return []
    try:
        compile_regex(pattern)
    except RegexError as exc:
        return [_err(path, f"regular expression {pattern!r}: {exc}", "regex")]
    return []


def _cluster_errors(doc: dict[str, Any]) -> list[ConfigError]:
    errors: list[ConfigError] = []
    names = [(("clusters", i, "name"), c.get("name")) for i, c in _items(doc, "clusters")]
    errors += _unique(names, "cluster name")
    for i, cluster in _items(doc, "clusters"):
        errors += _positive_duration(("clusters", i, "connect_timeout"),
                                     cluster.get("connect_timeout"))
        if ("endpoints" in cluster) == ("service" in cluster):
            errors.append(_err(("clusters", i), f"cluster {cluster.get('name')!r} needs "
                               "exactly one of endpoints (listed) and service (discovered)",
                               "cluster_endpoints"))
        endpoints = [e for _, e in _items(cluster, "endpoints")]
        errors += _unique(
            [(("clusters", i, "endpoints", j, "address"), e.get("address"))
             for j, e in _items(cluster, "endpoints")], "endpoint address")
        for j, endpoint in _items(cluster, "endpoints"):
            errors += _port_errors(("clusters", i, "endpoints", j, "address"),
                                   endpoint.get("address"), minimum=1)
        errors += _unique([(("clusters", i, "subsets", j, "name"), s.get("name"))
                           for j, s in _items(cluster, "subsets")], "subset name")
        for j, subset in _items(cluster, "subsets"):
            labels = subset.get("labels")
            if not isinstance(labels, dict):
                continue
            matching = [
                e for e in endpoints
                if isinstance(e.get("labels", {}), dict)
                and all(e.get("labels", {}).get(k) == v for k, v in labels.items())
            ]
            if endpoints and not matching:
                wanted = ", ".join(f"{k}={v}" for k, v in labels.items())
                errors.append(_err(("clusters", i, "subsets", j),
                                   f"subset {subset.get('name')!r} selects no endpoint of "
                                   f"cluster {cluster.get('name')!r} (no endpoint has "
                                   f"labels {wanted})", "subset_endpoints"))
    return errors


def _port_errors(path: Path, address: Any, minimum: int = 0) -> list[ConfigError]:
    if not isinstance(address, str) or ":" not in address:
        return []
    try:
        _, port = split_address(address)
    except ValueError:
        return []
    if not minimum <= port <= 65535:
        return [_err(path, f"port {port} is out of range ({minimum}-65535)", "port")]
    return []


def _bind_key(address: Any) -> tuple[str, int] | None:
    if not isinstance(address, str):
        return None
    try:
        host, port = split_address(address)
    except ValueError:
        return None
    return (host.lower(), port) if port != 0 else None


def _listener_errors(doc: dict[str, Any]) -> list[ConfigError]:
    errors: list[ConfigError] = []
    listeners = list(_items(doc, "listeners"))
    errors += _unique([(("listeners", i, "name"), lst.get("name")) for i, lst in listeners],
                      "listener name")
    binds: list[tuple[Path, tuple[str, int]]] = []
    admin = _bind_key(doc.get("admin"))
    if admin is not None:
        binds.append((("admin",), admin))
    for i, listener in listeners:
        errors += _port_errors(("listeners", i, "address"), listener.get("address"))
        key = _bind_key(listener.get("address"))
        if key is not None:
            binds.append((("listeners", i, "address"), key))
    for n, (path, (host, port)) in enumerate(binds):
        for other_path, (other_host, other_port) in binds[:n]:
            if port == other_port and (
                host == other_host or host in _WILDCARD_HOSTS or other_host in _WILDCARD_HOSTS
            ):
                errors.append(_err(path, f"address conflicts with {format_path(other_path)} "
                                         f"(both bind port {port})", "unique_address"))
                break
    clusters = [c.get("name") for _, c in _items(doc, "clusters")]
    for i, listener in listeners:
        routes = list(_items(listener, "routes"))
        errors += _unique([(("listeners", i, "routes", j, "name"), r.get("name"))
                           for j, r in routes], "route name")
        for j, route in routes:
            base: Path = ("listeners", i, "routes", j)
            cluster = route.get("cluster")
            if isinstance(cluster, str) and cluster not in clusters:
                known = ", ".join(str(c) for c in clusters) or "none"
                errors.append(_err((*base, "cluster"), f"route {route.get('name')!r} names "
                                   f"cluster {cluster!r}, which is not defined (clusters: "
                                   f"{known})", "cluster_ref"))
            match = route.get("match")
            if isinstance(match, dict):
                errors += _destination_errors((*base, "match"), match,
                                              listener.get("use_original_dst") is True)
                errors += _regex_error((*base, "match", "regex"), match.get("regex"))
                headers = match.get("headers")
                if isinstance(headers, dict):
                    for name, rule in headers.items():
                        if isinstance(rule, dict):
                            errors += _regex_error((*base, "match", "headers", name, "regex"),
                                                   rule.get("regex"))
    return errors


#: the schema's pattern of ``match.destination``.
_DESTINATION_SHAPE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[0-9.]+)(:[0-9]{1,5})?")


def _destination_errors(path: Path, match: dict[str, Any], original: bool) -> list[ConfigError]:
    keys = [key for key in ("destination", "destination_port") if key in match]
    if keys and not original:
        return [_err((*path, keys[0]), f"{keys[0]} needs use_original_dst: true on the "
                     "listener: only there do connections have an original destination, "
                     "so this route would never match", "original_dst")]
    wanted = match.get("destination")
    # Another shape is the schema's error already.
    if isinstance(wanted, str) and _DESTINATION_SHAPE.fullmatch(wanted):
        try:
            destination(wanted)
        except ValueError as exc:
            return [_err((*path, "destination"), f"{wanted!r} is not an IP address with an "
                         f"optional :port ({exc})", "destination")]
    return []


def _control_errors(doc: dict[str, Any]) -> list[ConfigError]:
    # The schema checks each URL. A replica named twice is a slip (it would be tried twice
    # a round), refused as `--control` refuses it.
    control = doc.get("control")
    url = control.get("url") if isinstance(control, dict) else None
    items = url.split(",") if isinstance(url, str) else url if isinstance(url, list) else []
    seen: set[str] = set()
    for item in items:
        normalized = item.strip().rstrip("/") if isinstance(item, str) else ""
        if not normalized:
            continue
        if normalized in seen:
            return [_err(("control", "url"), f"{normalized!r} is given twice", "unique_url")]
        seen.add(normalized)
    return []


def _access_log_errors(doc: dict[str, Any]) -> list[ConfigError]:
    # The schema checks the shape; whether the operators compile only the compiler knows.
    section = doc.get("access_log")
    if not isinstance(section, dict):
        return []
    text, mapping = section.get("format"), section.get("json_format")
    if text is not None and mapping is not None:
        return [_err(("access_log",), "give format or json_format, not both", "access_log")]
    try:
        if isinstance(text, str):
            compile_format(text)
        elif isinstance(mapping, dict):
            compile_log_format(AccessLogConfig(json_format=mapping))
    except FormatError as exc:
        key = "format" if isinstance(text, str) else "json_format"
        return [_err(("access_log", key, *exc.where), str(exc), "access_log")]
    return []


def _telemetry_errors(doc: dict[str, Any]) -> list[ConfigError]:
    # A misspelt listener name would silently report that listener's traffic as the
    # source side: Istio's dashboards would count it twice, or not at all.
    telemetry = doc.get("telemetry")
    named = telemetry.get("inbound_listeners") if isinstance(telemetry, dict) else None
    if not isinstance(named, list):
        return []
    listeners = {str(item.get("name")) for _, item in _items(doc, "listeners")}
    return [_err(("telemetry", "inbound_listeners", i),
                 f"no listener is named {name!r}{did_you_mean(str(name), sorted(listeners))}",
                 "listener")
            for i, name in enumerate(named) if name not in listeners]


def semantic_errors(doc: dict[str, Any]) -> list[ConfigError]:
    """Cross-reference checks of the core sections."""
    return (_cluster_errors(doc) + _listener_errors(doc) + _control_errors(doc)
            + _access_log_errors(doc) + _telemetry_errors(doc))


@dataclass(frozen=True)
class ChainSite:
    """Where a chain entry is written: its path, listener, route and scope, and for a
    route entry, the enabled listener entry of the same plugin it replaces."""

    path: Path
    entry: dict[str, Any]
    listener: str
    route: str | None
    route_cluster: str | None
    replaces: dict[str, Any] | None = None


def chain_sites(doc: dict[str, Any]) -> Iterator[ChainSite]:
    for i, listener in _items(doc, "listeners"):
        name = str(listener.get("name", ""))
        inherited: dict[str, dict[str, Any]] = {}
        for k, entry in _items(listener, "plugins"):
            if isinstance(entry.get("name"), str) and entry.get("enabled") is not False:
                inherited.setdefault(entry["name"], entry)
            yield ChainSite(("listeners", i, "plugins", k), entry, name, None, None)
        for j, route in _items(listener, "routes"):
            cluster = route.get("cluster")
            for k, entry in _items(route, "plugins"):
                replaced = inherited.get(entry["name"]) if isinstance(entry.get("name"), str) \
                    else None
                yield ChainSite(("listeners", i, "routes", j, "plugins", k), entry, name,
                                str(route.get("name", "")),
                                cluster if isinstance(cluster, str) else None, replaced)


def _unknown(name: str, registry: PluginRegistry) -> str:
    known = registry.names()
    listing = ", ".join(known) if known else "none installed"
    return f"unknown plugin {name!r} (installed: {listing}){did_you_mean(name, known)}"


def plugin_errors(
    doc: dict[str, Any],
    registry: PluginRegistry,
    on_valid: Callable[[ChainSite, PolicyType], list[ConfigError]],
) -> list[ConfigError]:
    """Check every chain entry: the plugin exists and loaded, its version constraint
    holds, names are unique within a list, and its config is valid for its schema.
    ``on_valid`` runs further checks on entries that passed all of that."""
    errors: list[ConfigError] = []
    compiled: dict[str, Any] = {}
    seen: dict[Path, dict[str, Path]] = {}
    for site in chain_sites(doc):
        name = site.entry.get("name")
        if not isinstance(name, str):
            continue
        names = seen.setdefault(site.path[:-1], {})
        if name in names:
            errors.append(_err(site.path, f"plugin {name!r} appears twice in this list "
                                          f"(first at {format_path(names[name])})",
                               "unique_name"))
        names.setdefault(name, site.path)
        policy = registry.get(name)
        if policy is None:
            failure = registry.load_error(name)
            if failure is not None:
                errors.append(ConfigError(format_path((*site.path, "name")), str(failure),
                                          name, failure.version, "plugin"))
            else:
                errors.append(ConfigError(format_path((*site.path, "name")),
                                          _unknown(name, registry), name, rule="plugin"))
            continue
        found: list[ConfigError] = []
        if site.replaces is not None and site.entry.get("enabled") is False \
                and policy.cls.authorizes:
            found.append(ConfigError(
                format_path((*site.path, "enabled")),
                f"a route cannot disable the listener's {name!r}: it authorises every "
                "request on the listener; narrow it on the route instead",
                name, policy.version, "authorization"))
        spec = site.entry.get("version")
        if isinstance(spec, str):
            try:
                if not registry.version_satisfies(name, spec):
                    found.append(ConfigError(
                        format_path((*site.path, "version")),
                        f"requires {name} {spec}, but {policy.distribution} "
                        f"{policy.version} is installed", name, policy.version, "version"))
            except ValueError as exc:
                found.append(ConfigError(format_path((*site.path, "version")), str(exc),
                                         name, policy.version, "version"))
        config = site.entry.get("config", {})
        if isinstance(config, dict):
            validator = compiled.get(name)
            if validator is None:
                validator = compiled[name] = SchemaValidator(policy.schema)
            for error in validator.iter_errors(config):
                found += schema_error(error, (*site.path, "config"), name, policy.version)
        if not found and isinstance(config, dict):
            found += on_valid(site, policy)
        errors += found
    return errors
