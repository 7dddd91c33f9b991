"""sidemesh-mtls: mutual TLS between sidecars with SPIFFE X.509-SVIDs."""

from importlib.metadata import PackageNotFoundError, version

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
