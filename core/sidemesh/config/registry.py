"""Plugin discovery and the registry of policy types.

pluggy finds plugins (entry-point group ``sidemesh``), checks their hook implementations
against :mod:`sidemesh.api.policy` and knows which distribution each came from. The
registry then asks every plugin for its :class:`~sidemesh.api.policy.Policy` classes.

A broken plugin never takes the others down: an import error, an invalid hook, a bad
schema or two plugins claiming one policy name are recorded in
:attr:`PluginRegistry.load_errors`, shown by ``sidemesh plugins``, and reported by config
validation when a chain names the broken plugin.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pluggy
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from sidemesh.api import hookspecs
from sidemesh.api.policy import Policy

__all__ = [
    "DATA_PATH_HOOKS",
    "ENTRY_POINT_GROUP",
    "PluginLoadError",
    "PluginRegistry",
    "PolicyType",
    "composed_schema",
    "core_schema",
]

ENTRY_POINT_GROUP = "sidemesh"
#: The Policy methods that run on the data path, in definition order; ``sidemesh
#: plugins`` lists which of them a policy overrides. Derived from the contract so a hook
#: added to :class:`~sidemesh.api.policy.Policy` shows up without a change here.
DATA_PATH_HOOKS = tuple(
    name
    for name, member in vars(Policy).items()
    if callable(member)
    and not name.startswith("_")
    and name not in ("check_config", "close", "waiting_for")
)
#: Distribution name shown for plugins registered in-process (tests, embedding).
LOCAL_DISTRIBUTION = "(local)"
LOCAL_VERSION = "0+local"
_CORE_SCHEMA_FILE = "sidemesh.schema.json"


@dataclass(frozen=True)
class PolicyType:
    """One policy a plugin provides: what a chain entry's ``name`` refers to."""

    name: str
    cls: type[Policy]
    distribution: str
    version: str
    schema: dict[str, Any]
    schema_id: str
    hooks: tuple[str, ...]


@dataclass(frozen=True)
class PluginLoadError:
    """A plugin that could not be used, and why.

    :param name: the entry-point (plugin) name, or the policy name for a conflict.
    """

    name: str
    distribution: str
    version: str
    message: str

    def __str__(self) -> str:
        return f"plugin {self.name!r} failed to load: {self.message}"


def _core_schema_text() -> str:
    # The checkout's schemas/ holds the one copy. A wheel has it inside the package
    # (force-included at build time); an editable install runs core/sidemesh, which has
    # none, so the checkout's is next.
    packaged = resources.files("sidemesh").joinpath("schemas").joinpath(_CORE_SCHEMA_FILE)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(__file__).resolve().parents[3] / "schemas" / _CORE_SCHEMA_FILE
    if checkout.is_file():
        return checkout.read_text(encoding="utf-8")
    raise FileNotFoundError(
        f"the core config schema is missing: neither sidemesh/schemas/{_CORE_SCHEMA_FILE} "
        f"in the installed package nor {checkout}; reinstall sidemesh"
    )


def core_schema() -> dict[str, Any]:
    """The core config schema (a fresh copy each call): ``schemas/sidemesh.schema.json``
    of the checkout, shipped in the wheel as ``sidemesh/schemas/sidemesh.schema.json``."""
    schema: dict[str, Any] = json.loads(_core_schema_text())
    return schema


def _overridden_hooks(cls: type[Policy]) -> tuple[str, ...]:
    return tuple(h for h in DATA_PATH_HOOKS if getattr(cls, h, None) is not getattr(Policy, h))


def _local_version(cls: type) -> str:
    module = sys.modules.get(cls.__module__)
    version = getattr(module, "__version__", None)
    return version if isinstance(version, str) else LOCAL_VERSION


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class PluginRegistry:
    """The policy types available to this process, by name."""

    def __init__(
        self,
        manager: pluggy.PluginManager,
        types: dict[str, PolicyType],
        load_errors: Sequence[PluginLoadError],
    ) -> None:
        self.manager = manager
        self._types = types
        self._errors = tuple(load_errors)

    @classmethod
    def load(cls, extra_plugins: Sequence[object] = ()) -> PluginRegistry:
        """Discover installed plugins, register ``extra_plugins`` (modules or objects
        with ``@hookimpl`` functions), and collect their policies."""
        pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        pm.add_hookspecs(hookspecs)
        errors: list[PluginLoadError] = []
        origins: dict[int, tuple[str, str]] = {}

        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            dist = ep.dist
            dist_name = dist.metadata["Name"] if dist is not None else "?"
            dist_version = dist.version if dist is not None else "?"
            try:
                # One entry point per call, so one failing import skips only itself.
                pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name)
            except Exception as exc:
                errors.append(PluginLoadError(ep.name, dist_name, dist_version, _describe(exc)))
        for plugin, facade in pm.list_plugin_distinfo():
            origins[id(plugin)] = (facade.project_name, facade.version)

        for extra in extra_plugins:
            try:
                pm.register(extra)
            except Exception as exc:
                name = getattr(extra, "__name__", type(extra).__name__)
                errors.append(
                    PluginLoadError(name, LOCAL_DISTRIBUTION, LOCAL_VERSION, _describe(exc))
                )

        cls._check_pending(pm, errors, origins)
        types = cls._collect(pm, errors, origins)
        return cls(pm, types, errors)

    @staticmethod
    def _check_pending(
        pm: pluggy.PluginManager,
        errors: list[PluginLoadError],
        origins: dict[int, tuple[str, str]],
    ) -> None:
        # check_pending() stops at the first plugin implementing an unknown hook: drop
        # that plugin and look again, so every offender is reported.
        while True:
            try:
                pm.check_pending()
                return
            except pluggy.PluginValidationError as exc:
                name = pm.get_name(exc.plugin) or repr(exc.plugin)
                dist, version = origins.get(id(exc.plugin), (LOCAL_DISTRIBUTION, LOCAL_VERSION))
                errors.append(PluginLoadError(name, dist, version, str(exc)))
                pm.unregister(exc.plugin)

    @staticmethod
    def _collect(
        pm: pluggy.PluginManager,
        errors: list[PluginLoadError],
        origins: dict[int, tuple[str, str]],
    ) -> dict[str, PolicyType]:
        found: dict[str, list[PolicyType]] = {}
        for impl in pm.hook.sidemesh_policies.get_hookimpls():
            dist, version = origins.get(id(impl.plugin), ("", ""))
            try:
                classes = impl.function()
                if not isinstance(classes, list | tuple):
                    raise TypeError(
                        f"sidemesh_policies() returned {type(classes).__name__}, "
                        "expected a list of Policy subclasses"
                    )
                policies = [_policy_type(c, dist, version) for c in classes]
            except Exception as exc:
                errors.append(
                    PluginLoadError(
                        impl.plugin_name,
                        dist or LOCAL_DISTRIBUTION,
                        version or LOCAL_VERSION,
                        _describe(exc),
                    )
                )
                continue
            for policy in policies:
                found.setdefault(policy.name, []).append(policy)

        types: dict[str, PolicyType] = {}
        for name, candidates in found.items():
            if len(candidates) == 1:
                types[name] = candidates[0]
                continue
            # Neither wins: which one ran would depend on installation order.
            providers = ", ".join(f"{p.distribution} {p.version}" for p in candidates)
            first = candidates[0]
            errors.append(
                PluginLoadError(
                    name,
                    first.distribution,
                    first.version,
                    f"policy name {name!r} is provided by more than one plugin ({providers}); "
                    "uninstall one of them",
                )
            )
        return dict(sorted(types.items()))

    def get(self, name: str) -> PolicyType | None:
        return self._types.get(name)

    def names(self) -> list[str]:
        return list(self._types)

    def all(self) -> list[PolicyType]:
        return list(self._types.values())

    @property
    def load_errors(self) -> tuple[PluginLoadError, ...]:
        return self._errors

    def load_error(self, name: str) -> PluginLoadError | None:
        """The load error recorded for a plugin or policy called ``name``, if any."""
        for error in self._errors:
            if error.name == name:
                return error
        return None

    def version_satisfies(self, name: str, spec: str) -> bool:
        """Whether the installed version of policy ``name`` satisfies the PEP 440
        specifier ``spec``.

        :raises KeyError: when no policy is called ``name``.
        :raises ValueError: when ``spec`` is not a valid specifier.
        """
        policy = self._types[name]
        try:
            specifier = SpecifierSet(spec)
        except InvalidSpecifier as exc:
            raise ValueError(f"{spec!r} is not a PEP 440 version specifier") from exc
        try:
            version = Version(policy.version)
        except InvalidVersion:
            return False
        return specifier.contains(version, prereleases=True)


def _policy_type(cls: object, distribution: str, version: str) -> PolicyType:
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise TypeError(f"{cls!r} is not a subclass of sidemesh.Policy")
    if not isinstance(cls.name, str) or not cls.name:
        raise TypeError(f"{cls.__qualname__} has no policy name (set the `name` attribute)")
    schema = cls.schema
    if not isinstance(schema, dict):
        raise TypeError(f"{cls.__qualname__}.schema must be a dict (a JSON Schema)")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise TypeError(
            f"{cls.__qualname__}.schema is not a valid JSON Schema: {exc.message}"
        ) from None
    return PolicyType(
        name=cls.name,
        cls=cls,
        distribution=distribution or LOCAL_DISTRIBUTION,
        version=version or _local_version(cls),
        schema=schema,
        schema_id=str(schema.get("$id", "")),
        hooks=_overridden_hooks(cls),
    )


def composed_schema(registry: PluginRegistry) -> dict[str, Any]:
    """The core schema with every installed policy's config schema composed in.

    Each policy schema lands under ``$defs`` as ``plugin.<name>``; a chain entry whose
    ``name`` is that policy must have a ``config`` valid against it.
    """
    schema = core_schema()
    defs = schema.setdefault("$defs", {})
    entry = defs["chainEntry"]
    conditions: list[dict[str, Any]] = []
    for policy in registry.all():
        key = f"plugin.{policy.name}"
        defs[key] = copy.deepcopy(policy.schema)
        conditions.append(
            {
                "if": {"properties": {"name": {"const": policy.name}}, "required": ["name"]},
                "then": {"properties": {"config": {"$ref": f"#/$defs/{key}"}}},
            }
        )
    if conditions:
        entry["allOf"] = conditions
    return schema
