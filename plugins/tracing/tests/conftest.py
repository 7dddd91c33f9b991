"""Makes the W3C test bed importable as ``sidemesh_tracing_testbed`` (tests run with
``--import-mode=importlib``, so a test directory is not on ``sys.path``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "sidemesh_tracing_testbed", Path(__file__).with_name("tracing_testbed.py")
)
assert _spec is not None and _spec.loader is not None
testbed = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = testbed
_spec.loader.exec_module(testbed)
