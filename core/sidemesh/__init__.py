"""sidemesh: a service mesh data plane whose every feature is a plugin."""

__version__ = "0.1.0"

from . import compiled

# Before any other module of the package is imported: a fresh compiled build of the
# request path must be found first on __path__ (see compiled.py).
compiled.activate(__path__)

from .hookspecs import ConnectionSetup, Policy, PolicyContext, hookimpl  # noqa: E402

__all__ = ["ConnectionSetup", "Policy", "PolicyContext", "__version__", "hookimpl"]
