"""Example sidemesh plugin: a header and path policy."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sidemesh-header-policy")
except PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+local"

__all__ = ["__version__"]
