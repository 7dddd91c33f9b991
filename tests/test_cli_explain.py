"""`sidemesh explain`: the route a request gets, the reasons others did not match, the
chain, the endpoints, and what each policy of the chain says it would do (its
``explain`` hook; the core knows no plugin by name)."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import pytest

from sidemesh import Explanation, Policy, PolicyContext, Request, hookimpl
from sidemesh.config.registry import PluginRegistry
from sidemesh.tools import config_commands
from sidemesh.tools.cli import main

TESTS = Path(__file__).resolve().parent

CONFIG = """\
node: {service: productpage}
clusters:
  - name: reviews
    endpoints:
      - {address: 127.0.0.1:9081, labels: {version: v1}}
      - {address: 127.0.0.1:9082, labels: {version: v2}}
      - {address: 127.0.0.1:9083, labels: {version: v3}}
    subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
      - {name: v3, labels: {version: v3}}
  - name: ratings
    endpoints: [{address: 127.0.0.1:9090}]
listeners:
  - name: outbound
    address: 127.0.0.1:15001
    plugins: [{name: faketracing, config: {sampling: 0.1}}]
    routes:
      - name: ratings
        match: {host: ratings, prefix: /}
        cluster: ratings
      - name: reviews-jason
        match: {host: reviews, prefix: /, headers: {end-user: {exact: jason}}}
        cluster: reviews
        plugins:
          - name: fakesplit
            config: {destinations: [{subset: v2, weight: 50}, {subset: v3, weight: 50}]}
      - name: reviews
        match: {host: reviews, prefix: /reviews, methods: [GET]}
        cluster: reviews
        timeout: 3s
        plugins:
          - {name: fakeretry, version: ">=1", config: {attempts: 3}}
          - name: fakesplit
            config:
              destinations: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]
              hash_on: header:end-user
  - name: inbound
    address: 127.0.0.1:15006
    routes:
      - {name: local, match: {path: /health}, cluster: ratings}
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(TESTS / "fake_policies.py", site / "sidemesh_explain_fakes.py")
    info = site / "sidemesh_explain_fakes-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sidemesh-explain-fakes\n"
                                   "Version: 1.2.3\n")
    (info / "entry_points.txt").write_text("[sidemesh]\nexplainfakes = sidemesh_explain_fakes\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    path = tmp_path / "sidemesh.yaml"
    path.write_text(CONFIG)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_text_shows_reasons_chain_and_endpoints(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "explain", "-c", str(config), "GET",
                       "http://reviews:9080/reviews/1?x=1")
    assert code == 0
    assert "route ratings: host 'reviews' != 'ratings'" in out
    assert "route reviews-jason: header end-user is missing (wanted exact 'jason')" in out
    assert "-> route reviews: matched" in out
    assert "cluster reviews (round_robin), timeout 3s" in out
    assert "1. faketracing 1.2.3 [listener]: sampling=0.1" in out
    assert '2. fakeretry 1.2.3 (requires >=1) [route]: attempts=3' in out
    assert "127.0.0.1:9083  {version=v3}" in out
    # The fakes have no explain hook: their entries say nothing more.
    assert "explain failed" not in out
    assert "listener inbound (127.0.0.1:15006):" in out
    assert "route local: path '/reviews/1' != '/health'" in out


def test_path_with_host_header_and_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "explain", "--json", "-c", str(config), "get", "/reviews/7",
                       "-H", "Host: reviews", "-H", "end-user: jason")
    assert code == 0
    result = json.loads(out)
    outbound = result["listeners"][0]
    assert [t["route"] for t in outbound["tried"]] == ["ratings", "reviews-jason"]
    match = outbound["match"]
    assert match["route"] == "reviews-jason"
    assert [(c["name"], c["explanation"]) for c in match["chain"]] == [
        ("faketracing", None), ("fakesplit", None)]
    assert match["subsets"]["v2"] == {"version": "v2"}
    assert result["listeners"][1]["match"] is None


def test_method_mismatch_and_no_match_exit_1(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "explain", "-c", str(config), "POST", "http://reviews/reviews")
    assert code == 1
    assert "route reviews: method POST not in GET" in out
    assert "no listener has a route for this request" in out


@pytest.mark.parametrize(("url", "headers", "text"), [
    ("reviews/x", [], "neither an absolute URL"),
    ("http:///x", [], "has no host"),
    ("/x", ["no-colon-here"], "is not 'name: value'"),
])
def test_bad_requests_are_explained(
    config: Path, capsys: pytest.CaptureFixture[str], url: str, headers: list[str], text: str
) -> None:
    args = ["explain", "-c", str(config), "GET", url]
    for header in headers:
        args += ["-H", header]
    code, _, err = run(capsys, *args)
    assert code == 1
    assert text in err


def test_invalid_config_lists_errors(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config.write_text(CONFIG.replace("cluster: ratings\n      - name: reviews-jason",
                                     "cluster: nope\n      - name: reviews-jason"))
    code, _, err = run(capsys, "explain", "-c", str(config), "GET", "http://ratings/")
    assert code == 1
    assert "is not a valid config" in err and "'nope', which is not defined" in err


class Canary(Policy):
    """A third-party policy that tells what it would do, from the request and context
    the core hands its ``explain`` hook."""

    name = "canary"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object", "additionalProperties": False,
        "properties": {"header": {"type": "string", "default": "x-canary"}},
    }

    @classmethod
    def explain(cls, config: dict[str, Any], request: Request, context: PolicyContext
                ) -> Explanation | None:
        value = request.headers.get(config["header"])
        cluster = context.cluster.name if context.cluster else None
        return Explanation(
            f"canary on {config['header']}: {'yes' if value else 'no'}",
            [f"{request.method} {request.host} {request.path} -> route {context.route} "
             f"({context.scope}) of cluster {cluster}",
             f"clusters: {', '.join(sorted(context.clusters))}"],
            {"canary": bool(value), "cluster": request.cluster,
             "endpoints": [e.address for e in context.clusters["reviews"].endpoints]},
        )


class Broken(Policy):
    name = "broken"

    @classmethod
    def explain(cls, config: dict[str, Any], request: Request, context: PolicyContext
                ) -> Explanation | None:
        raise RuntimeError("no idea")


class Quiet(Policy):
    name = "quiet"


class LocalPolicies:
    @hookimpl
    def sidemesh_policies(self) -> list[type[Policy]]:
        return [Canary, Broken, Quiet]


HOOKED = CONFIG.replace(
    "plugins: [{name: faketracing, config: {sampling: 0.1}}]",
    "plugins: [{name: canary}, {name: broken}, {name: quiet}]",
)


@pytest.fixture
def hooked(config: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The config with listener-level local policies, registered in this process."""
    monkeypatch.setattr(config_commands, "_registry",
                        lambda: PluginRegistry.load(extra_plugins=[LocalPolicies()]))
    config.write_text(HOOKED)
    return config


def test_a_third_party_policy_explains_itself(
    hooked: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "explain", "-c", str(hooked), "GET",
                       "http://reviews/reviews/1?x=1", "-H", "x-canary: 1")
    assert code == 0
    lines = out.splitlines()
    at = lines.index("    1. canary 0+local [listener]: header=\"x-canary\"")
    assert lines[at + 1:at + 4] == [
        "       canary on x-canary: yes",
        "         GET reviews /reviews/1?x=1 -> route reviews (listener) of cluster reviews",
        "         clusters: ratings, reviews",
    ]


def test_a_failing_explain_costs_only_its_entry(
    hooked: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "explain", "-c", str(hooked), "GET", "http://reviews/reviews/1")
    assert code == 0
    lines = out.splitlines()
    at = lines.index("    2. broken 0+local [listener]: (defaults)")
    assert lines[at + 1:at + 3] == ["       explain failed: RuntimeError: no idea",
                                    "    3. quiet 0+local [listener]: (defaults)"]
    assert "canary on x-canary: no" in out
    assert "127.0.0.1:9083  {version=v3}" in out


def test_json_has_each_explanation_and_its_data(
    hooked: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "explain", "--json", "-c", str(hooked), "GET",
                       "http://reviews/reviews/1", "-H", "x-canary: 1")
    assert code == 0
    chain = {c["name"]: c["explanation"] for c in json.loads(out)["listeners"][0]["match"]["chain"]}
    assert chain["canary"]["data"] == {
        "canary": True, "cluster": "reviews",
        "endpoints": ["127.0.0.1:9081", "127.0.0.1:9082", "127.0.0.1:9083"]}
    assert chain["canary"]["summary"] == "canary on x-canary: yes"
    assert chain["broken"] == {"error": "RuntimeError: no idea"}
    assert chain["quiet"] is None
