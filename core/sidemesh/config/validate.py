"""YAML -> validated, typed sidecar config: the one place that knows the format.

``validate`` finds every problem at once (core schema, plugin schemas and versions,
references between sections, each policy's own checks); ``build`` returns a
:class:`~sidemesh.datapath.model.SidecarConfig` only for a config with none, so a bad config is
never half-applied.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from sidemesh.api.policy import PolicyContext
from sidemesh.config.build import (
    build_cluster,
    build_sidecar,
    fill_defaults,
    inherit_configs,
    node_dict,
)
from sidemesh.config.checks import ChainSite, SchemaValidator, plugin_errors, semantic_errors
from sidemesh.config.errors import ConfigError, ConfigInvalid, format_path, schema_error
from sidemesh.config.registry import PluginRegistry, PolicyType, core_schema
from sidemesh.config.source import MAX_CONFIG_BYTES, istio_error, parse_yaml
from sidemesh.datapath.model import NodeConfig, SidecarConfig

__all__ = [
    "ConfigError",
    "ConfigInvalid",
    "build",
    "config_digest",
    "load_file",
    "parse_yaml",
    "validate",
]


CheckEntry = Callable[[ChainSite, PolicyType], list[ConfigError]]


@lru_cache(maxsize=1)
def _core() -> tuple[dict[str, Any], Any]:
    schema = core_schema()
    return schema, SchemaValidator(schema)


def _with_plugin_defaults(doc: dict[str, Any], registry: PluginRegistry) -> dict[str, Any]:
    for listener in doc["listeners"]:
        entries = list(listener["plugins"])
        for route in listener["routes"]:
            entries += route["plugins"]
        for entry in entries:
            policy = registry.get(entry["name"])
            if policy is not None:
                entry["config"] = fill_defaults(entry["config"], policy.schema)
    return doc


def _context_builder(doc: dict[str, Any], core_ok: bool) -> CheckEntry:
    """Return ``on_valid`` for :func:`plugin_errors`: run the policy's ``check_config``
    with the context the data path would give it (clusters only when the core sections
    are valid enough to build them)."""
    from sidemesh.datapath.cluster import Cluster  # the data path's cluster; only needed for checks

    clusters: dict[str, Any] = {}
    node: dict[str, Any] = {}
    if core_ok:
        filled = fill_defaults(doc, _core()[0])
        clusters = {c["name"]: Cluster(build_cluster(c)) for c in filled["clusters"]}
        node = node_dict(NodeConfig(**filled["node"]))

    def on_valid(site: ChainSite, policy: PolicyType) -> list[ConfigError]:
        config = fill_defaults(site.entry.get("config", {}), policy.schema)
        context = PolicyContext(
            plugin=policy.name,
            listener=site.listener,
            route=site.route,
            scope="listener" if site.route is None else "route",
            cluster=clusters.get(site.route_cluster) if site.route_cluster else None,
            clusters=clusters,
            node=node,
            replaces=(
                fill_defaults(site.replaces.get("config", {}), policy.schema)
                if site.replaces is not None and isinstance(site.replaces.get("config", {}), dict)
                else None
            ),
        )
        where = format_path((*site.path, "config"))
        try:
            messages = policy.cls.check_config(config, context)
        except Exception as exc:
            messages = [f"check_config raised {type(exc).__name__}: {exc}"]
        return [ConfigError(where, str(m), policy.name, policy.version, "check_config")
                for m in messages]

    return on_valid


def validate(doc: Any, registry: PluginRegistry) -> list[ConfigError]:
    """Every problem in ``doc`` (a parsed YAML/JSON document); empty when it is valid."""
    if not isinstance(doc, dict):
        return [ConfigError("", f"the config must be a mapping, got {type(doc).__name__}",
                            rule="type")]
    istio = istio_error([doc])
    if istio is not None:
        # Not a broken sidemesh config: its schema errors would only hide what it is.
        return [istio]
    _, validator = _core()
    errors: list[ConfigError] = []
    for error in validator.iter_errors(doc):
        errors += schema_error(error)
    core_ok = not errors
    inherited = inherit_configs(doc)
    errors += plugin_errors(inherited, registry, _context_builder(doc, core_ok))
    errors += semantic_errors(doc)
    # One problem found by two routes (a schema keyword and a semantic rule) is shown once.
    unique: dict[tuple[str, str], ConfigError] = {}
    for error in errors:
        unique.setdefault((error.path, error.message), error)
    return list(unique.values())


def build(doc: Any, registry: PluginRegistry) -> SidecarConfig:
    """Validate ``doc`` and return the typed config, defaults filled in.

    :raises ConfigInvalid: with every error when the document is not valid.
    """
    errors = validate(doc, registry)
    if errors:
        raise ConfigInvalid(errors)
    schema, _ = _core()
    filled = _with_plugin_defaults(fill_defaults(inherit_configs(doc), schema), registry)
    return build_sidecar(filled, raw=json.loads(json.dumps(doc)))


def load_file(path: str | Path, registry: PluginRegistry) -> SidecarConfig:
    """Read, parse and build a config file.

    :raises ConfigInvalid: for an unreadable file too (never ``OSError``).
    """
    source = str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigInvalid([ConfigError("", f"{source}: cannot read: {reason}",
                                         rule="file")]) from None
    return build(parse_yaml(data, source, command_file=source), registry)


def config_digest(doc: Any) -> str:
    """A short, stable digest of a document (key order and formatting do not matter):
    the version of a config that came from a file."""
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]
