"""`sidemesh plugins`, `sidemesh schema`, help texts, the long-running commands'
argument parsing, and commands other distributions add (group `sidemesh.commands`)."""

from __future__ import annotations

import importlib
import json
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from sidemesh.tools.cli import COMMANDS_GROUP, build_parser, main

TESTS = Path(__file__).resolve().parent


def add_dist(site: Path, dist: str, ep: str, module: str, source: str,
             group: str = "sidemesh", attr: str = "") -> None:
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[{group}]\n{ep} = {module}{attr}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    add_dist(tmp_path, "sidemesh-cmd-fakes", "cmdfakes", "sidemesh_cmd_fakes",
             (TESTS / "fake_policies.py").read_text())
    add_dist(tmp_path, "sidemesh-cmd-broken", "cmdbroken", "sidemesh_cmd_broken",
             "raise RuntimeError('incompatible with this sidemesh')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return tmp_path


def test_plugins_json_lists_policies_and_load_errors(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["plugins", "--json"])
    listing = json.loads(capsys.readouterr().out)
    assert code == 1  # a plugin failed to load
    retry = next(p for p in listing["plugins"] if p["name"] == "fakeretry")
    assert retry == {"name": "fakeretry", "distribution": "sidemesh-cmd-fakes",
                     "version": "1.2.3", "hooks": ["on_request", "on_response"],
                     "schema_id": "https://sidemesh.dev/schemas/plugins/fakeretry.json"}
    broken = next(e for e in listing["load_errors"] if e["name"] == "cmdbroken")
    assert broken["error"] == "RuntimeError: incompatible with this sidemesh"


def test_plugins_table(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["plugins"])
    out = capsys.readouterr().out
    assert "fakesplit" in out and "select_upstream" in out and "sidemesh-cmd-fakes" in out
    assert "plugin 'cmdbroken' failed to load: RuntimeError" in out


def test_schema_composed_and_per_plugin(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    composed = json.loads(capsys.readouterr().out)
    assert composed["$id"] == "https://sidemesh.dev/schemas/sidemesh.json"
    assert "plugin.fakeretry" in composed["$defs"]
    assert main(["schema", "fakesplit"]) == 0
    assert json.loads(capsys.readouterr().out)["required"] == ["destinations"]
    assert main(["schema", "fakesplitt"]) == 1
    assert "unknown plugin 'fakesplitt'" in capsys.readouterr().err
    assert main(["schema", "cmdbroken"]) == 1
    assert "failed to load" in capsys.readouterr().err


def test_help_has_examples_for_newcomers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for command in ("validate", "plugins", "schema", "explain", "proxy", "control", "token"):
        assert command in out
    assert "examples:" in out and "sidemesh explain -c sidemesh.yaml GET" in out


def test_proxy_arguments() -> None:
    parser = build_parser()
    args = parser.parse_args(["proxy", "-c", "side.yaml"])
    assert (args.config, args.drain_timeout, args.log_level) == ("side.yaml", 10.0, "info")
    args = parser.parse_args(["proxy", "--control", "http://127.0.0.1:15010", "--service",
                              "reviews", "--token-file", "t", "--drain-timeout", "250ms"])
    assert (args.service, args.token_file, args.drain_timeout) == ("reviews", "t", 0.25)
    control = parser.parse_args(["control"])
    assert (control.data, control.listen, control.admin_token_file) == (
        "./sidemesh-data", "127.0.0.1:15010", None)
    token = parser.parse_args(["token", "--service", "reviews"])
    assert (token.data, token.service) == ("./sidemesh-data", "reviews")


@pytest.mark.parametrize(("argv", "text"), [
    (["proxy"], "either -c/--config FILE or --control URL"),
    (["proxy", "-c", "a.yaml", "--control", "http://x"], "either -c/--config FILE"),
    (["proxy", "--control", "http://x"], "--control needs --service"),
    (["proxy", "-c", "a.yaml", "--drain-timeout", "soon"], "is not a duration"),
    (["proxy", "--control", "http://x", "--service", "a", "--register-ttl", "3x"],
     "--register-ttl: '3x' is not a duration: write numbers with units"),
    (["proxy", "-c", "a.yaml", "--deregister-grace", "1"], "'1' is not a duration"),
    (["proxy-status", "--stale-after", "2x"], "'2x' is not a duration"),
    (["proxy", "-c", "a.yaml", "--log-level", "loud"], "invalid choice"),
    (["token"], "--service"),
])
def test_bad_arguments_exit_2_with_a_message(
    argv: list[str], text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    assert text in capsys.readouterr().err


HELLO_COMMAND = """
def register(subparsers):
    p = subparsers.add_parser("hello", help="greet the mesh")
    p.add_argument("--name", default="mesh")
    p.set_defaults(handler=lambda args: print(f"hello {args.name}") or 0)
"""


@pytest.fixture
def command_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    add_dist(tmp_path, "sidemesh-cmd-hello", "hello", "sidemesh_cmd_hello", HELLO_COMMAND,
             group=COMMANDS_GROUP, attr=":register")
    add_dist(tmp_path, "sidemesh-cmd-gone", "gone", "sidemesh_cmd_gone",
             "raise ImportError('needs sidemesh 9')\n", group=COMMANDS_GROUP, attr=":register")
    add_dist(tmp_path, "sidemesh-cmd-clash", "clash", "sidemesh_cmd_clash",
             "def register(subparsers):\n    subparsers.add_parser('validate')\n",
             group=COMMANDS_GROUP, attr=":register")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return tmp_path


def test_a_contributed_command_shows_up_and_runs(
    command_site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    captured = capsys.readouterr()
    assert "hello" in captured.out and "greet the mesh" in captured.out
    assert main(["hello", "--name", "reviews"]) == 0
    assert capsys.readouterr().out == "hello reviews\n"


def test_a_broken_command_is_reported_and_the_rest_still_works(
    command_site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hello"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "hello mesh\n"
    assert ("command 'gone' (sidemesh-cmd-gone 1.2.3) failed to register: "
            "ImportError: needs sidemesh 9") in captured.err
    # A name the core has keeps the core's command.
    assert "command 'clash' (sidemesh-cmd-clash 1.2.3) failed to register" in captured.err
    assert build_parser().parse_args(["validate", "a.yaml"]).files == ["a.yaml"]


def test_the_demo_is_a_contributed_command() -> None:
    if not entry_points(group=COMMANDS_GROUP, name="demo"):
        pytest.skip("sidemesh-demo is not installed")
    args = build_parser().parse_args(["demo", "--keep-running"])
    assert args.keep_running is True and callable(args.handler)
