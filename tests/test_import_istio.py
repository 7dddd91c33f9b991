"""`sidemesh import istio` on the Istio samples of ../shared/conformance/istio/: every
sample imports into configs `sidemesh validate` accepts, and what cannot be translated is
reported by the path of the field in the input; `validate` points Istio YAML to it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidemesh.config.registry import PluginRegistry
from sidemesh.config.validate import load_file
from sidemesh.testing import validate_config
from sidemesh.tools.cli import main

ISTIO = Path(__file__).resolve().parents[1] / ".." / "shared" / "conformance" / "istio"
BOOKINFO = ISTIO / "bookinfo-networking"
SAMPLES = sorted([*ISTIO.glob("api-doc-examples/*.yaml"), *BOOKINFO.glob("*.yaml")])
DR_ALL = BOOKINFO / "destination-rule-all.yaml"
LINE = re.compile(r"^(?:(?P<file>[^:\s]+):(?P<doc>\d+): )?(?:(?P<what>[A-Za-z]+/\S+|--endpoint "
                  r"\S+)(?: (?P<path>spec\S*))?: )?(?P<reason>.+)$")

pytestmark = pytest.mark.skipif(not SAMPLES, reason=f"Istio samples not found at {ISTIO}")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = main(["import", "istio", *args])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def configs(out: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))}


def walk(document: Any, path: str) -> Any:
    """The value at ``spec.http[0].route`` in a document; KeyError/IndexError if none."""
    value = document
    for name, index in re.findall(r"\.?([^.\[\]]+)|\[(\d+)\]", path):
        value = value[int(index)] if index else value[name]
    return value


def lost(lines: list[str]) -> set[str]:
    """``Kind/name path`` of every loss line (``file:doc`` for a document that is not a
    resource at all)."""
    found = set()
    for line in lines:
        m = LINE.match(line)
        assert m is not None, f"not 'FILE:DOC: KIND/NAME PATH: reason': {line!r}"
        what = m["what"] or f"{m['file']}:{m['doc']}"
        found.add(f"{what} {m['path']}" if m["path"] else what)
    return found


def _inputs(sample: Path) -> list[Path]:
    # The bookinfo docs apply destination-rule-all.yaml before any VirtualService.
    if sample.parent == BOOKINFO and sample.name.startswith(("virtual-service", "fault")):
        return [DR_ALL, sample]
    return [sample]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_every_istio_sample_imports(sample: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    inputs = _inputs(sample)
    out = tmp_path / "out"
    code, lines, err = run(capsys, *map(str, inputs), "--out", str(out), "--allow-partial",
                           "--service", "web")
    assert code == 0, err
    registry = PluginRegistry.load()
    written = sorted(out.glob("*.yaml"))
    assert written and (out / "web.yaml").exists()
    for path in written:
        load_file(path, registry)  # raises ConfigInvalid with every error
    documents = {p.name: list(yaml.safe_load_all(p.read_text())) for p in inputs}
    for line in lines:
        m = LINE.match(line)
        assert m is not None, line
        if m["path"]:
            # The report names a field that is really there in the input.
            walk(documents[m["file"]][int(m["doc"]) - 1], m["path"])
        elif m["what"] is None:
            assert m["reason"].startswith("not a Kubernetes resource")
        else:
            assert m["what"].startswith("--endpoint ") or m["reason"].startswith("spec")


#: What each sample loses, by resource and field; samples not listed lose nothing.
LOST = {
    "destination-rule-02-L47-DestinationRule.yaml": {
        "DestinationRule/bookinfo-ratings spec.subsets[0].trafficPolicy"},
    "destination-rule-03-L74-DestinationRule.yaml": {
        "DestinationRule/bookinfo-ratings-port spec.trafficPolicy.portLevelSettings[0]",
        "DestinationRule/bookinfo-ratings-port spec.trafficPolicy.portLevelSettings[1]"},
    "destination-rule-07-L403-LoadBalancerSettings.yaml": {
        "DestinationRule/bookinfo-ratings spec.trafficPolicy.loadBalancer.consistentHash"},
    "destination-rule-08-L604-ConnectionPoolSettings.yaml": {
        "DestinationRule/bookinfo-redis spec.trafficPolicy.connectionPool.tcp.tcpKeepalive"},
    "destination-rule-09-L777-OutlierDetection.yaml": {
        "DestinationRule/reviews-cb-policy "
        "spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection"},
    "destination-rule-10-L897-ClientTLSSettings.yaml": {
        "DestinationRule/db-mtls spec.trafficPolicy.tls.mode"},
    "destination-rule-11-L915-ClientTLSSettings.yaml": {
        "DestinationRule/tls-foo spec.trafficPolicy.tls.mode",
        "DestinationRule/tls-foo spec.host"},
    "destination-rule-17-L1235-ZoneAwareLoadBalancerSetting.yaml": {
        "DestinationRule/ratings-zone-aware spec.trafficPolicy.loadBalancer.zoneAwareLbSetting"},
    "virtual-service-07-L451-retries.yaml": {"virtual-service-07-L451-retries.yaml:1"},
    "virtual-service-08-L511-Delegate.yaml": {
        "VirtualService/bookinfo spec.http[0].delegate",
        "VirtualService/bookinfo spec.http[1].delegate",
        "VirtualService/bookinfo spec.gateways"},
    "virtual-service-09-L536-Delegate.yaml": {"VirtualService/productpage spec"},
    "virtual-service-12-L635-TLSRoute.yaml": {
        "VirtualService/bookinfo-sni spec.tls[0]", "VirtualService/bookinfo-sni spec.tls[1]",
        "VirtualService/bookinfo-sni spec.gateways"},
    "virtual-service-13-L676-TCPRoute.yaml": {"VirtualService/bookinfo-mongo spec.tcp[0]"},
    "virtual-service-14-L710-HTTPMatchRequest.yaml": set(),
    "virtual-service-18-L1059-HTTPRedirect.yaml": {
        "VirtualService/ratings-route spec.http[0].redirect"},
    "virtual-service-20-L1151-HTTPDirectResponse.yaml": {
        "VirtualService/ratings-route spec.http[0].directResponse"},
    "virtual-service-23-L1244-HTTPRewrite.yaml": {
        "VirtualService/ratings-route spec.http[0].rewrite",
        "VirtualService/ratings-route spec.http[0].route[0].destination.subset"},
    "virtual-service-25-L1388-CorsPolicy.yaml": {
        "VirtualService/ratings-route spec.http[0].corsPolicy",
        "VirtualService/ratings-route spec.http[0].route[0].destination.subset"},
    "virtual-service-26-L1485-Delay.yaml": {
        "VirtualService/reviews-route spec.http[0].fault",
        "VirtualService/reviews-route spec.http[0].match[0].sourceLabels",
        "VirtualService/reviews-route spec.http[0].route[0].destination.subset"},
    "egress-rule-google-apis.yaml": {
        "ServiceEntry/googleapis spec.ports[1]",
        "VirtualService/rewrite-port-for-googleapis spec.http[0].match[0].port",
        "DestinationRule/originate-tls-for-googleapis "
        "spec.trafficPolicy.portLevelSettings[0]"},
    "virtual-service-ratings-test-abort.yaml": {"VirtualService/ratings spec.http[0].fault"},
    "virtual-service-ratings-test-delay.yaml": {"VirtualService/ratings spec.http[0].fault"},
    "bookinfo-gateway.yaml": set(),
    "destination-rule-all-mtls.yaml": set(),
    "virtual-service-reviews-test-v2.yaml": set(),
}


@pytest.mark.parametrize("name", sorted(LOST))
def test_the_report_names_each_untranslatable_field(
        name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample = next(p for p in SAMPLES if p.name == name)
    # Endpoints for every bookinfo subset: their absence is reported too (below).
    subsets = {"reviews": ["v1", "v2", "v3"], "ratings": ["v1", "v2", "v2-mysql", "v2-mysql-vm"],
               "details": ["v1", "v2"], "productpage": ["v1"]}
    endpoints = [f"--endpoint={svc}/{v}=10.0.0.{i}:9080" for i, (svc, v) in enumerate(
        (s, v) for s, versions in subsets.items() for v in versions)]
    inputs = _inputs(sample)
    with_subsets = sample.parent == BOOKINFO and any(
        p.name.startswith("destination-rule") for p in inputs)
    code, lines, _ = run(capsys, *map(str, inputs), "--out", str(tmp_path), "--service", "web",
                         *(endpoints if with_subsets else []))
    assert lost(lines) == LOST[name]
    assert code == (1 if LOST[name] else 0)
    # Without --allow-partial nothing is written when something is lost.
    assert bool(list(tmp_path.glob("*.yaml"))) == (not LOST[name])


def test_each_loss_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample = BOOKINFO / "virtual-service-ratings-test-abort.yaml"
    code, lines, err = run(capsys, str(DR_ALL), str(sample), "--out", str(tmp_path))
    assert code == 1
    assert ("virtual-service-ratings-test-abort.yaml:1: VirtualService/ratings spec.http[0]."
            "fault: sidemesh has no fault injection: requests are forwarded unharmed") in lines
    # The subsets routes use have no endpoints: placeholders, reported with the fix.
    assert any(line.startswith("--endpoint ratings: no endpoint of "
                               "ratings.default.svc.cluster.local is in subset v1")
               and "--endpoint ratings/SUBSET=HOST:PORT" in line for line in lines)
    assert "nothing written (--allow-partial writes the configs anyway)" in err
    assert not list(tmp_path.glob("*.yaml"))


def test_a_placeholder_endpoint_is_reported_and_allow_partial_writes_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = run(capsys, str(DR_ALL), str(BOOKINFO / "virtual-service-reviews-v3.yaml"),
                         "--out", str(tmp_path), "--allow-partial")
    assert code == 0 and len(lines) == 1 and lines[0].startswith("--endpoint reviews:")
    reviews = next(c for c in configs(tmp_path)["productpage"]["clusters"]
                   if c["name"] == "reviews")
    assert reviews["endpoints"] == [{"address": "v3.reviews.default.svc.cluster.local:80",
                                     "labels": {"version": "v3"}}]
    assert reviews["subsets"] == [{"name": "v3", "labels": {"version": "v3"}}]


def test_validate_names_an_istio_resource_and_the_importer(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    vs = BOOKINFO / "virtual-service-reviews-v3.yaml"
    assert main(["validate", str(vs), str(DR_ALL)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL {vs} (1 error)" in out
    assert (f"this is an Istio VirtualService (networking.istio.io/v1), not a sidemesh config; "
            f"convert it with `sidemesh import istio {vs}`") in out
    # Several resources to a file (---) are recognised too.
    assert (f"{DR_ALL}: this is an Istio DestinationRule (networking.istio.io/v1) and 3 more "
            f"Istio resources") in out
    assert "required" not in out and "unknown key" not in out
    # Documents from elsewhere (the control plane's PUT) get it without a file name.
    doc = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", "spec": {}}
    (error,) = validate_config(doc)
    assert error.rule == "istio" and error.message == (
        "this is an Istio PeerAuthentication (security.istio.io/v1), not a sidemesh config; "
        "convert it with `sidemesh import istio FILE`")


def test_options_are_checked_before_anything_is_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["import", "istio", str(DR_ALL), "--out", str(tmp_path), "--endpoint", "reviews"])
    assert exit_.value.code == 2
    assert "--endpoint 'reviews': give HOST[/SUBSET]=HOST:PORT[,HOST:PORT]" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["import", "istio", str(DR_ALL)])
    assert "one of the arguments --out --control is required" in capsys.readouterr().err


def test_an_unreadable_file_and_a_broken_one_are_reported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: VirtualService\nspec: {hosts: [a\n")
    code, lines, err = run(capsys, str(broken), str(tmp_path / "missing.yaml"), "--out",
                           str(tmp_path / "out"))
    assert code == 1
    assert any(line.startswith(f"{broken}:3:1: ") and line.endswith(
        ": the file is not imported") for line in lines)
    assert any("missing.yaml: cannot read: No such file or directory" in line for line in lines)
    assert "the input names no service of the mesh" in err


def test_a_resource_of_another_shape_is_reported_not_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "odd.yaml"
    source.write_text("""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: odd}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews}, weight: lots}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: odd}
spec: {selector: {matchLabels: {app: reviews}}, rules: [{from: everyone}]}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec: {}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews-v1}
""")
    code, lines, err = run(capsys, str(source), "--out", str(tmp_path / "out"),
                           "--allow-partial")
    assert code == 0
    assert lines == [
        "odd.yaml:3: Sidecar/default: networking.istio.io/v1 Sidecar is not imported: "
        "sidemesh has no equivalent",
        "odd.yaml:1: VirtualService/odd spec: not a valid resource (ValueError: invalid "
        "literal for int() with base 10: 'lots'): not imported",
        "service reviews: a policy that applies is not valid (TypeError: "
        "spec.rules[0].from is not a list): every request is denied"]
    assert "note: odd.yaml:4: Deployment/reviews-v1: not an Istio resource: skipped" in err
    inbound = configs(tmp_path / "out")["reviews"]["listeners"][0]
    assert inbound["routes"] == [{"name": "local", "match": {"prefix": "/"}, "cluster": "local",
                                  "timeout": "0s",
                                  "plugins": [{"name": "mtls", "config": {"allow": []}}]}]
