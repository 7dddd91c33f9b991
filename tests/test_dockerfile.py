"""The Dockerfile: clean under hadolint (from PyPI: these machines have no container
engine), multi-stage with a small non-root final stage, and its build stage has in its
context all it needs to build the wheels it installs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    return str(found) if found.exists() else shutil.which("hadolint") or "hadolint"


def _lint(path: Path) -> list[dict[str, object]]:
    result = subprocess.run(
        [_hadolint(), "--format", "json", "--failure-threshold", "style", str(path)],
        capture_output=True, text=True, timeout=60, cwd=path.parent)
    findings: list[dict[str, object]] = json.loads(result.stdout or "[]")
    assert (result.returncode == 0) == (findings == []), result.stderr
    return findings


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), one list per stage."""
    lines = DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
    stages: list[list[str]] = []
    for line in (raw.strip() for raw in lines):
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_hadolint_finds_nothing_at_any_level() -> None:
    assert _lint(DOCKERFILE) == []


def test_hadolint_does_find_what_it_should(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install sidemesh\n")
    codes = {finding["code"] for finding in _lint(bad)}
    assert {"DL3006", "DL3013", "DL3042"} <= codes


def test_the_final_stage_is_small_non_root_and_runs_sidemesh() -> None:
    build, final = _stages()
    # The build stage's full image has the C compiler mypyc needs; the final one is slim.
    assert build[0].startswith("FROM python:3.11 AS ")
    assert "ENV HATCH_BUILD_HOOK_ENABLE_MYPYC=1" in build
    assert final[0] == "FROM python:3.11-slim"
    # No compiler, no package manager run: only wheels from the build stage, no index.
    assert not any("apt-get" in line or "gcc" in line for line in final)
    [install] = [line for line in final if "pip install" in line]
    assert "--no-index" in install and "from=build" in install
    assert "USER 1337:1337" in final
    assert final[-2:] == ['ENTRYPOINT ["sidemesh"]', 'CMD ["--help"]']


def test_the_context_keeps_out_environments_and_secrets() -> None:
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line and not line.startswith("#")]
    # Everything is left out but what is named: a .venv, .git, a control plane's data
    # directory with its CA keys and admin token never reach a build.
    assert ignored[0] == "*"
    allowed = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    copied = {part.rstrip("/") for line in _stages()[0] if line.startswith("COPY ")
              for part in line.split()[1:-1]}
    assert copied <= allowed


def test_the_build_stage_context_builds_every_wheel(tmp_path: Path) -> None:
    """What the build stage copies is enough to build the core and every plugin (as
    ``pip wheel`` there does, here without fetching anything)."""
    context = tmp_path / "context"
    context.mkdir()
    for line in _stages()[0]:
        if not line.startswith("COPY "):
            continue
        for source in line.split()[1:-1]:
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(origin, context / source, ignore=shutil.ignore_patterns(
                    "__pycache__", "*.pyc", "*.egg-info", "tests"))
            else:
                shutil.copy(origin, context / source)
    [wheel_run] = [line for line in _stages()[0] if line.startswith("RUN pip wheel")]
    projects = [word for word in wheel_run.split() if word.startswith(("./", '".'))]
    projects = [p.strip('"').split("[")[0] for p in projects]
    assert projects[0] == "." and len(projects) == 1 + len(list(ROOT.glob("plugins/*/")))
    out = tmp_path / "wheels"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(out), *projects],
        cwd=context, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = {w.name.split("-")[0]: w for w in out.glob("*.whl")}
    assert set(wheels) == {"sidemesh", *(f"sidemesh_{p.name}" for p in
                                         ROOT.glob("plugins/*/"))}
    names = zipfile.ZipFile(wheels["sidemesh"]).namelist()
    assert "sidemesh/schemas/sidemesh.schema.json" in names
    assert "sidemesh/tools/kube/inject.py" in names
