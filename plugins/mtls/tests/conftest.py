"""Makes the shared test kit importable as ``sidemesh_mtls_testkit`` (tests run with
``--import-mode=importlib``, so a test directory is not on ``sys.path``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "sidemesh_mtls_testkit", Path(__file__).with_name("mtls_testkit.py")
)
assert _spec is not None and _spec.loader is not None
testkit = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = testkit
_spec.loader.exec_module(testkit)


@pytest.fixture
def pki(tmp_path: Path) -> testkit.Pki:
    return testkit.Pki.create(tmp_path)
