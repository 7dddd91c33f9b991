"""The one version source of the ``sidemesh`` distribution (read by hatch at build time)
and of its public API: plugins pin ``sidemesh>=MAJOR.MINOR,<MAJOR.(MINOR+1)`` while the
major version is 0."""

__version__ = "0.4.0"
