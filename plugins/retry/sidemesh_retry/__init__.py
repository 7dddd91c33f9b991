"""sidemesh-retry: Envoy-style retries with back-off, Retry-After and a retry budget."""

from importlib.metadata import PackageNotFoundError, version

from .policy import RetryPolicy

try:
    __version__ = version("sidemesh-retry")
except PackageNotFoundError:
    __version__ = "0.0.0"

__all__ = ["RetryPolicy", "__version__"]
