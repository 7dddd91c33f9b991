"""sidemesh-tracing: W3C/B3 trace propagation, spans per request and attempt, Zipkin export."""

from importlib.metadata import PackageNotFoundError, version

from .policy import TracingPolicy

try:
    __version__ = version("sidemesh-tracing")
except PackageNotFoundError:
    __version__ = "0.0.0"

__all__ = ["TracingPolicy", "__version__"]
