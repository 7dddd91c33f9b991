"""sidemesh-mtls: mutual TLS between sidecars with SPIFFE X.509-SVIDs."""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .identity import Identity, IdentityError, IdentityUnavailable, Material
    from .manager import IdentityManager, manager_for
    from .policy import MtlsPolicy
    from .sources import CAIdentitySource, FileIdentitySource

try:
    __version__ = version("sidemesh-mtls")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"

__all__ = [
    "CAIdentitySource",
    "FileIdentitySource",
    "Identity",
    "IdentityError",
    "IdentityManager",
    "IdentityUnavailable",
    "Material",
    "MtlsPolicy",
    "__version__",
    "manager_for",
]

# Every sidecar imports this package (the plugin's entry point is in it) even when no
# config uses mtls: the certificate code and its cryptography and httpx (~14 MB of RSS)
# load on first use of a name, as an mtls policy's construction does.
_HOMES = {
    "CAIdentitySource": "sources",
    "FileIdentitySource": "sources",
    "Identity": "identity",
    "IdentityError": "identity",
    "IdentityManager": "manager",
    "IdentityUnavailable": "identity",
    "Material": "identity",
    "MtlsPolicy": "policy",
    "manager_for": "manager",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value
