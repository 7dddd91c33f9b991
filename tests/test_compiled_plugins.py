"""The plugins' compiled modules: a checkout's build of a plugin runs whole, only while
its sources are unchanged, and ``sidemesh version`` says which plugins run compiled."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import sidemesh_retry
from sidemesh.datapath import MANIFEST, PLUGIN_BUILDS, build_dir, plugin_fingerprint
from sidemesh.tools.build_compiled import checkout_plugins

SUFFIX = str(sysconfig.get_config_var("EXT_SUFFIX"))
RETRY_SOURCES = Path(sidemesh_retry.__file__).parent
RETRY_MODULES = ["policy", "conditions"]

PROBE = """
import sys
if sys.argv[1] == "plugin-first":
    import sidemesh_retry
import sidemesh, sidemesh_retry.policy, sidemesh_retry.conditions
from sidemesh.datapath import PluginBuilds
states = {p: s.reason for f in sys.meta_path if isinstance(f, PluginBuilds)
          for p, s in f.states.items()}
print(sidemesh_retry.policy.__file__)
print(sidemesh_retry.conditions.__file__)
print(states.get("sidemesh_retry", "no verdict"))
"""


def _probe(build: Path, order: str = "sidemesh-first", **env: str) -> tuple[str, str, str]:
    """Which files sidemesh_retry's two compiled modules came from, and the verdict."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SIDEMESH_COMPILED")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, order],
        env={**environ, "SIDEMESH_COMPILED_DIR": str(build), **env},
        capture_output=True, text=True, timeout=60, check=True,
    )
    policy, conditions, verdict = result.stdout.splitlines()
    return policy, conditions, verdict


def _fake_build(tmp_path: Path, sources: dict[str, str] | None = None) -> Path:
    """A build of sidemesh_retry whose files are not loadable extensions: were it used,
    the probe's import would fail, so a passing probe proves the sources ran."""
    build = tmp_path / "build"
    folder = build / PLUGIN_BUILDS / "sidemesh_retry"
    (folder / "sidemesh_retry").mkdir(parents=True)
    manifest = plugin_fingerprint(RETRY_SOURCES, RETRY_MODULES)
    if sources is not None:
        manifest["sources"] = sources
    files = [f"sidemesh_retry/{name}{SUFFIX}" for name in RETRY_MODULES]
    for name in files:
        (folder / name).write_bytes(b"not an extension")
    (folder / MANIFEST).write_text(json.dumps({**manifest, "files": files}))
    return build


def test_a_plugin_build_older_than_one_of_its_sources_is_not_used_at_all(
        tmp_path: Path) -> None:
    sources = plugin_fingerprint(RETRY_SOURCES, RETRY_MODULES)["sources"]
    assert isinstance(sources, dict)
    policy, conditions, verdict = _probe(_fake_build(tmp_path, {**sources, "policy": "0" * 64}))
    # conditions.py is unchanged, yet runs from source too: a build is used whole or not.
    assert policy.endswith("sidemesh_retry/policy.py")
    assert conditions.endswith("sidemesh_retry/conditions.py")
    assert verdict == "interpreted: policy.py changed since the build (rebuild it)"


def test_a_plugin_imported_before_sidemesh_runs_from_its_sources(tmp_path: Path) -> None:
    policy, conditions, verdict = _probe(_fake_build(tmp_path), "plugin-first")
    assert policy.endswith("policy.py") and conditions.endswith("conditions.py")
    assert "was imported before sidemesh" in verdict


def test_sidemesh_compiled_0_runs_the_plugins_interpreted(tmp_path: Path) -> None:
    policy, conditions, verdict = _probe(_fake_build(tmp_path), SIDEMESH_COMPILED="0")
    assert policy.endswith("policy.py") and conditions.endswith("conditions.py")
    assert verdict == "no verdict"


def test_a_matching_plugin_build_runs_compiled(tmp_path: Path) -> None:
    built = build_dir() / PLUGIN_BUILDS / "sidemesh_retry"
    if not (built / MANIFEST).is_file():
        pytest.skip("this checkout has no compiled build of sidemesh_retry (./dev setup)")
    build = tmp_path / "build"
    shutil.copytree(built, build / PLUGIN_BUILDS / "sidemesh_retry")
    policy, conditions, verdict = _probe(build)
    assert policy == str(build / PLUGIN_BUILDS / f"sidemesh_retry/sidemesh_retry/policy{SUFFIX}")
    assert conditions.endswith(f"conditions{SUFFIX}")
    assert verdict.startswith("compiled: 2 modules from")


def test_the_plugins_name_their_compiled_modules_in_their_pyproject() -> None:
    declared = {plugin.package: plugin.modules for plugin in checkout_plugins()}
    assert declared["sidemesh_retry"] == RETRY_MODULES
    assert {"sidemesh_circuit", "sidemesh_split"} <= set(declared)
    assert "sidemesh_tracing" not in declared  # measured no faster compiled
    for plugin in checkout_plugins():
        assert all((plugin.package_dir / f"{m}.py").is_file() for m in plugin.modules)


@pytest.mark.skipif(
    os.environ.get("SIDEMESH_EXPECT_COMPILED") != "1",
    reason="CI sets SIDEMESH_EXPECT_COMPILED=1; elsewhere a missing compiler is allowed",
)
def test_ci_runs_the_builtin_plugins_compiled_and_version_says_so() -> None:
    sidemesh = Path(sys.executable).with_name("sidemesh")
    result = subprocess.run([str(sidemesh), "version", "--client", "--json"],
                            capture_output=True, text=True, timeout=60, check=True)
    paths = {p["name"]: p["request_path"] for p in json.loads(result.stdout)["plugins"]}
    assert paths == {"circuit": "compiled", "mtls": "interpreted", "retry": "compiled",
                     "split": "compiled", "tracing": "interpreted"}
