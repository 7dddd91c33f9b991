"""The external programs the harness drives, installed with apt-get when missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from bench.procs import BenchError

__all__ = ["Tools", "ensure_tools", "find_tool", "tool_version"]

#: program -> Debian package. wrk2 (fixed-rate wrk) is not packaged: see fixed_rate.py.
PACKAGES = {"nginx": "nginx", "wrk": "wrk", "haproxy": "haproxy"}
REQUIRED = ("nginx", "wrk")
# Debian puts daemons in sbin, which a non-login shell's PATH may lack.
EXTRA_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
APT_TIMEOUT = 900


@dataclass(frozen=True)
class Tools:
    nginx: str
    wrk: str
    haproxy: str | None


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in EXTRA_DIRS:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _apt(args: list[str]) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"  $ apt-get {' '.join(args)}", flush=True)
    try:
        result = subprocess.run(
            ["apt-get", *args], env=env, capture_output=True, text=True, timeout=APT_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"apt-get {args[0]} failed: {exc}") from exc
    if result.returncode != 0:
        tail = " | ".join(result.stderr.strip().splitlines()[-3:])
        raise BenchError(f"apt-get {args[0]} failed (exit {result.returncode}): {tail}")


def ensure_tools(install: bool = True) -> Tools:
    """Find nginx, wrk and haproxy; install the missing ones (root + apt-get only).

    nginx and wrk are required; haproxy is optional (its scenario is skipped without it).
    """
    missing = [name for name in PACKAGES if find_tool(name) is None]
    if missing and install:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            print(f"missing {', '.join(missing)}; cannot install (needs root and apt-get)")
        else:
            packages = [PACKAGES[name] for name in missing]
            print(f"installing missing tools: {', '.join(packages)}", flush=True)
            _apt(["update"])
            try:
                _apt(["install", "-y", "--no-install-recommends", *packages])
            except BenchError as exc:
                # haproxy alone failing must not stop the run; retry with the required ones.
                required = [PACKAGES[name] for name in missing if name in REQUIRED]
                if not required:
                    print(f"  {exc}; continuing without haproxy")
                else:
                    _apt(["install", "-y", "--no-install-recommends", *required])
    nginx, wrk = find_tool("nginx"), find_tool("wrk")
    if nginx is None or wrk is None:
        not_found = [name for name, path in (("nginx", nginx), ("wrk", wrk)) if path is None]
        raise BenchError(
            f"{' and '.join(not_found)} not found; install with: "
            f"apt-get install -y {' '.join(PACKAGES[n] for n in not_found)}"
        )
    return Tools(nginx=nginx, wrk=wrk, haproxy=find_tool("haproxy"))


def tool_version(argv: list[str]) -> str:
    """First line a program prints for its version flag (nginx and wrk use stderr)."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"
