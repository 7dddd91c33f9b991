"""Configs and installed plugins, as ``sidemesh validate`` and a sidecar see them."""

from __future__ import annotations

from typing import Any

from sidemesh.api.policy import Policy
from sidemesh.config.errors import ConfigError, ConfigInvalid
from sidemesh.config.registry import PluginRegistry
from sidemesh.config.snapshots import build_snapshot
from sidemesh.config.validate import build, validate
from sidemesh.datapath.model import SidecarConfig
from sidemesh.datapath.views import ClusterView

__all__ = [
    "CompiledConfig",
    "ConfigError",
    "ConfigInvalid",
    "build_config",
    "compile_config",
    "installed",
    "run_cli",
    "validate_config",
]


def installed(plugin: str) -> bool:
    """Whether a policy called ``plugin`` is installed (and loads)."""
    return PluginRegistry.load().get(plugin) is not None


def validate_config(doc: dict[str, Any]) -> list[ConfigError]:
    """Every error of ``doc`` against the installed plugins (empty when it is valid)."""
    return validate(doc, PluginRegistry.load())


def build_config(doc: dict[str, Any]) -> SidecarConfig:
    """``doc`` validated and typed; raises :class:`ConfigInvalid` with every error."""
    return build(doc, PluginRegistry.load())


class CompiledConfig:
    """A config compiled as a sidecar applies it, without listening: the policy
    instances of each route and the clusters they see."""

    def __init__(self, doc: dict[str, Any]) -> None:
        registry = PluginRegistry.load()
        self._snapshot = build_snapshot(
            build(doc, registry), registry, version="test", source="test"
        )

    def policies(self, listener: str, route: str) -> list[Policy]:
        """The policy instances of ``route`` on ``listener``, in chain order."""
        for compiled in self._snapshot.listeners[listener].routes:
            if compiled.name == route:
                return list(compiled.chain.policies)
        raise KeyError(f"no route {route!r} on listener {listener!r}")

    def cluster(self, name: str) -> ClusterView:
        return self._snapshot.clusters[name]


def compile_config(doc: dict[str, Any]) -> CompiledConfig:
    """See :class:`CompiledConfig`."""
    return CompiledConfig(doc)


def run_cli(*args: str) -> int:
    """Run ``sidemesh ARGS`` in this process; returns its exit status."""
    from sidemesh.tools.cli import main

    return main(list(args))
