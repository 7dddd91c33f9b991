"""sidemesh-circuit: circuit breakers (cluster limits) and outlier detection."""

from importlib.metadata import PackageNotFoundError, version

from .policy import CircuitPolicy

try:
    __version__ = version("sidemesh-circuit")
except PackageNotFoundError:
    __version__ = "0.0.0"

__all__ = ["CircuitPolicy", "__version__"]
