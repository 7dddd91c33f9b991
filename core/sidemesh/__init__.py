"""sidemesh: a service mesh data plane whose every feature is a plugin."""

from .hookspecs import ConnectionSetup, Policy, PolicyContext, hookimpl

__version__ = "0.1.0"

__all__ = ["ConnectionSetup", "Policy", "PolicyContext", "__version__", "hookimpl"]
