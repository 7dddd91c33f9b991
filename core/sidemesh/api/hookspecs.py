"""The lifecycle hooks: ordinary, synchronous pluggy hooks.

A plugin is a Python distribution registered under the ``sidemesh`` entry-point group.
Its entry point names a module (or object) that implements these hooks with
``@sidemesh.hookimpl``. The one every policy plugin implements is
:func:`sidemesh_policies`: it returns the :class:`~sidemesh.Policy` subclasses the plugin
provides.
"""

from __future__ import annotations

from typing import Any

import pluggy

from sidemesh.api.policy import Policy

__all__ = ["PROJECT", "hookimpl", "hookspec", "sidemesh_config_applied", "sidemesh_policies"]

PROJECT = "sidemesh"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def sidemesh_policies() -> list[type[Policy]]:  # type: ignore[empty-body]
    """Return the policy classes this plugin provides. Sync; called once when the
    plugin manager loads plugins (at start, and by ``sidemesh plugins``/``validate``).

    :returns: :class:`Policy` subclasses, each with a unique ``name``.
    """


@hookspec
def sidemesh_config_applied(version: str, source: str, config: dict[str, Any]) -> None:
    """Called after a config has been validated and swapped in. Sync; must not block.

    :param version: the config's version (the file's digest, or the control plane's
        version number).
    :param source: where it came from (``file:PATH`` or ``control:URL``).
    :param config: the applied config as a plain dictionary.
    """
