"""The embedded SQLite store: versions survive restarts, rollback, crash safety."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from asyncio import run
from pathlib import Path

import pytest

from sidemesh.control.auth import authenticate, issue_token
from sidemesh.control.sqlite import DB_FILE, SQLiteStore
from sidemesh.control.store import ProxyStatus


def _doc(n: int) -> dict[str, object]:
    return {"node": {"service": "web"}, "n": n}


def test_versions_history_and_rollback_survive_a_restart(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / DB_FILE)
    assert run(store.get_config("web")) is None
    assert [run(store.put_config("web", _doc(i), "admin")).version for i in (1, 2, 3)] == [1, 2, 3]
    assert run(store.put_config("web", _doc(3), "admin")).version == 3  # unchanged: no new one
    assert run(store.put_config("api", _doc(1), "admin")).version == 1  # per service
    back = run(store.rollback("web", 1, "admin"))
    assert (back.version, back.rollback_of, back.config) == (4, 1, _doc(1))
    token = run(issue_token(store, "web"))
    run(store.record_status(ProxyStatus("web-1", "web", "ACK", 4, 4, None,
                                    [{"name": "retry", "version": "0.1.0"}], time.time())))
    run(store.close())

    reopened = SQLiteStore(tmp_path / DB_FILE)
    head = run(reopened.get_config("web"))
    assert head is not None and head.version == 4 and head.config == _doc(1)
    assert [v.version for v in run(reopened.history("web"))] == [4, 3, 2, 1]
    assert run(reopened.get_config("web", 2)) is not None
    assert run(reopened.services()) == ["api", "web"]
    principal = run(authenticate(f"Bearer {token}", "admin-token", reopened))
    assert principal is not None and principal.service == "web"
    [proxy] = run(reopened.proxies())
    assert (proxy.id, proxy.state, proxy.applied) == ("web-1", "ACK", 4)
    run(reopened.close())


def test_a_failing_write_leaves_the_previous_version(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / DB_FILE)
    run(store.put_config("web", _doc(1), "admin"))
    with pytest.raises(TypeError):  # not JSON: fails inside the transaction
        run(store.put_config("web", {"bad": {1, 2}}, "admin"))
    head = run(store.get_config("web"))
    assert head is not None and head.version == 1
    assert run(store.put_config("web", _doc(2), "admin")).version == 2
    run(store.close())


_WRITER = textwrap.dedent("""
    import sys
    from asyncio import run
    from pathlib import Path
    from sidemesh.control.sqlite import SQLiteStore
    store = SQLiteStore(Path(sys.argv[1]))
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        run(store.put_config("web", {"node": {"service": "web"}, "n": n, "pad": "x" * 20000},
                             "admin"))
        if n == 1:
            print("committed", flush=True)
""")


def test_killed_while_writing_leaves_a_consistent_store(tmp_path: Path) -> None:
    """SIGKILL at arbitrary points during writes: the head is always a complete,
    committed version, versions are contiguous, and nothing half-written is visible."""
    path = tmp_path / DB_FILE
    written = 0
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)],
                                stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            # At least one commit a round however slow the disk, then a kill at any point.
            assert proc.stdout.readline().strip() == b"committed"
            time.sleep(0.3 + 0.1 * round_)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
        store = SQLiteStore(path)
        head = run(store.get_config("web"))
        history = run(store.history("web"))
        assert head is not None and head.version == history[0].version
        assert [v.version for v in history] == list(range(head.version, 0, -1))
        assert all(v.config["pad"] == "x" * 20000 for v in history)
        assert head.version > written  # each round committed more
        written = head.version
        run(store.close())
