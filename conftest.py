"""Loaded by pytest before any test module, wherever it lives."""

# A checkout's compiled plugin modules are used only when sidemesh was imported before
# the plugin (sidemesh.datapath.PluginBuilds): a test module that imports a plugin
# first would otherwise run it interpreted.
import sidemesh  # noqa: F401
