"""Imported Istio configs run in real sidecars in front of real upstreams, one per
subset: the bookinfo routes the Istio docs describe, retries, timeouts, outlier
detection, authorization over mTLS, and the push to a control plane."""

from __future__ import annotations

import collections
import contextlib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidemesh import testing
from sidemesh.testing import ProxyProcess, Reply, SeenRequest, Upstream, free_port
from sidemesh.tools.cli import main

BOOKINFO = (Path(__file__).resolve().parents[1] / ".." / "shared" / "conformance" / "istio"
            / "bookinfo-networking")
DR_ALL = BOOKINFO / "destination-rule-all.yaml"
TIMEOUT = 5.0

needs_bookinfo = pytest.mark.skipif(not DR_ALL.exists(), reason="conformance data not present")


def version(name: str) -> Upstream:
    """A stand-in for one version of a service: it answers its name."""
    return Upstream(lambda _: Reply(body=name.encode()), name=name)


def imported(tmp_path: Path, *args: str) -> dict[str, dict[str, Any]]:
    """Run the importer (nothing may be lost) and read the configs it wrote."""
    out = tmp_path / "configs"
    code = main(["import", "istio", *args, "--out", str(out), "--outbound", "127.0.0.1:0",
                 "--inbound", "127.0.0.1:0", "--admin", "off"])
    assert code == 0
    return {p.stem: yaml.safe_load(p.read_text()) for p in out.glob("*.yaml")}


def endpoints(service: str, upstreams: dict[str, Upstream]) -> list[str]:
    return [f"--endpoint={service}/{v}={u.address}" for v, u in upstreams.items()]


@contextlib.contextmanager
def subsets(*names: str) -> Iterator[dict[str, Upstream]]:
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(version(f"reviews-{name}")) for name in names}


def get(url: str, host: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers={"host": host, **headers}, timeout=TIMEOUT)


@needs_bookinfo
def test_bookinfo_reviews_jason_gets_v2_everyone_else_v1(tmp_path: Path) -> None:
    """virtual-service-reviews-test-v2.yaml: "requests from the user jason go to
    reviews:v2, all other users to reviews:v1" — in `sidemesh proxy`, as deployed."""
    outbound, admin = free_port(), free_port()
    with subsets("v1", "v2", "v3") as up:
        out = tmp_path / "configs"
        assert main(["import", "istio", str(DR_ALL),
                     str(BOOKINFO / "virtual-service-reviews-test-v2.yaml"), "--out", str(out),
                     "--outbound", f"127.0.0.1:{outbound}", "--inbound", "127.0.0.1:0",
                     "--admin", f"127.0.0.1:{admin}", *endpoints("reviews", up)]) == 0
        with ProxyProcess("proxy", "-c", str(out / "productpage.yaml")) as proxy:
            proxy.wait_http(f"http://127.0.0.1:{admin}/ready")
            url = f"http://127.0.0.1:{outbound}/reviews/0"
            for host in ("reviews", "reviews.default.svc.cluster.local", "reviews.default"):
                assert get(url, host, **{"end-user": "jason"}).text == "reviews-v2"
                assert get(url, host).text == "reviews-v1"
                assert get(url, host, **{"end-user": "alice"}).text == "reviews-v1"
            assert get(url, "unknown").status_code == 404
        assert not up["v3"].requests


@needs_bookinfo
def test_bookinfo_jason_v2_others_v3_and_the_weighted_splits(tmp_path: Path) -> None:
    with subsets("v1", "v2", "v3") as up:
        configs = imported(tmp_path / "a", str(DR_ALL),
                           str(BOOKINFO / "virtual-service-reviews-jason-v2-v3.yaml"),
                           *endpoints("reviews", up))
        with testing.running_sidecar(configs["productpage"]) as sidecar:
            url = sidecar.url("outbound") + "/reviews/1"
            assert {get(url, "reviews", **{"end-user": "jason"}).text for _ in range(5)} == {
                "reviews-v2"}
            assert {get(url, "reviews").text for _ in range(5)} == {"reviews-v3"}
        configs = imported(tmp_path / "b", str(DR_ALL),
                           str(BOOKINFO / "virtual-service-reviews-80-20.yaml"),
                           *endpoints("reviews", up))
        with testing.running_sidecar(configs["reviews"]) as sidecar, httpx.Client(
                headers={"host": "reviews"}, timeout=TIMEOUT) as client:
            seen = collections.Counter(
                client.get(sidecar.url("outbound") + "/").text for _ in range(400))
        assert set(seen) == {"reviews-v1", "reviews-v2"}
        assert 0.72 <= seen["reviews-v1"] / 400 <= 0.88, seen


@needs_bookinfo
def test_bookinfo_gateway_serves_the_productpage_paths(tmp_path: Path) -> None:
    with version("productpage") as productpage:
        configs = imported(tmp_path, str(BOOKINFO / "bookinfo-gateway.yaml"),
                           f"--endpoint=productpage={productpage.address}")
        gateway = configs["bookinfo-gateway"]
        gateway["listeners"][0]["address"] = "127.0.0.1:0"  # the Gateway's 8080 may be taken
        with testing.running_sidecar(gateway) as sidecar:
            base = sidecar.url(gateway["listeners"][0]["name"])
            for path in ("/productpage", "/static/style.css", "/login", "/logout",
                         "/api/v1/products/1"):
                response = get(base + path, "bookinfo.example.com")
                assert (response.status_code, response.text) == (200, "productpage"), path
            assert get(base + "/productpage/x", "bookinfo.example.com").status_code == 404
            assert get(base + "/admin", "bookinfo.example.com").status_code == 404
        assert [r.path for r in productpage.requests][:2] == ["/productpage", "/static/style.css"]


RESILIENCE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - match: [{uri: {prefix: /flaky}}]
    retries: {attempts: 2, retryOn: 5xx}
    route: [{destination: {host: ratings}}]
  - match: [{uri: {prefix: /slow}}]
    timeout: 300ms
    route: [{destination: {host: ratings}}]
  - match: [{uri: {prefix: /once}}]
    route: [{destination: {host: ratings}}]
  - route: [{destination: {host: ratings}}]
    retries: {attempts: 0}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, baseEjectionTime: 30s, maxEjectionPercent: 100}
"""


def test_retries_timeouts_and_outlier_detection(tmp_path: Path) -> None:
    calls: collections.Counter[str] = collections.Counter()

    def good(seen: SeenRequest) -> Reply:
        calls[seen.path] += 1
        if seen.path == "/flaky" and calls[seen.path] <= 2:
            return Reply(500, b"flaky")
        if seen.path == "/once" and calls[seen.path] == 1:
            return Reply(503, b"once")
        return Reply(200, b"good", delay=2.0 if seen.path == "/slow" else 0.0)

    source = tmp_path / "ratings.yaml"
    source.write_text(RESILIENCE)
    with Upstream(good) as up:
        configs = imported(tmp_path, str(source), f"--endpoint=ratings={up.address}",
                           "--service", "productpage")
        with testing.running_sidecar(configs["productpage"]) as sidecar:
            url = sidecar.url("outbound")
            # retries: {attempts: 2, retryOn: 5xx}: two failures, then the answer.
            flaky = get(url + "/flaky", "ratings")
            assert (flaky.status_code, flaky.text, calls["/flaky"]) == (200, "good", 3)
            # Istio's default policy retries a 503 on a route that says nothing.
            assert get(url + "/once", "ratings").text == "good" and calls["/once"] == 2
            started = time.monotonic()
            assert get(url + "/slow", "ratings").status_code == 504
            assert time.monotonic() - started < 1.5
    with Upstream(lambda _: Reply(500, b"bad")) as bad, version("good") as ok:
        configs = imported(tmp_path / "od", str(source),
                           f"--endpoint=ratings={bad.address},{ok.address}",
                           "--service", "productpage")
        with testing.running_sidecar(configs["productpage"]) as sidecar:
            answers = [get(sidecar.url("outbound") + "/other", "ratings").status_code
                       for _ in range(20)]
        # consecutive5xxErrors: 1 ejects the failing endpoint after its first 500.
        assert answers.count(500) <= 1 and answers.count(200) >= 19, answers


AUTHZ = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-viewer}
spec:
  selector: {matchLabels: {app: reviews}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/productpage"]}}]
    to: [{operation: {methods: [GET], paths: ["/reviews/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/reviews/admin*"]}}]}]
"""


def _identity(ca: Any, service: str, folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    cert, key_file = folder / f"{service}.pem", folder / f"{service}.key"
    cert.write_bytes(ca.sign_csr(csr, namespace="default", service=service))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, key_file


def _with_files(config: dict[str, Any], files: tuple[Path, Path], bundle: Path) -> None:
    """File mode has no control plane to sign certificates: give every mtls entry the
    sidecar's own."""
    cert, key = files
    for listener in config["listeners"]:
        for entry in [*listener.get("plugins", []),
                      *[p for r in listener["routes"] for p in r.get("plugins", [])]]:
            if entry["name"] == "mtls":
                entry["config"].update(cert_file=str(cert), key_file=str(key),
                                       bundle_file=str(bundle))


def test_authorization_policy_and_auto_mtls_between_two_sidecars(tmp_path: Path) -> None:
    policy = tmp_path / "authz.yaml"
    policy.write_text(AUTHZ)
    ca = testing.control.CertificateAuthority.open(tmp_path / "ca", "cluster.local")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.trust_bundle_pem())
    files = {name: _identity(ca, name, tmp_path) for name in ("reviews", "productpage",
                                                              "ratings")}
    with version("reviews") as app:
        reviews = imported(tmp_path / "a", str(policy), f"--app={app.address}")["reviews"]
        _with_files(reviews, files["reviews"], bundle)
        with testing.running_sidecar(reviews) as sidecar:
            port = sidecar.port("inbound")
            base = f"https://127.0.0.1:{port}"

            def client(service: str) -> httpx.Client:
                context = ssl.create_default_context(cafile=str(bundle))
                context.check_hostname = False  # SPIFFE IDs are URIs, not host names
                context.load_cert_chain(*map(str, files[service]))
                return httpx.Client(verify=context, timeout=TIMEOUT)

            with client("productpage") as productpage, client("ratings") as ratings:
                assert productpage.get(base + "/reviews/1").text == "reviews"
                assert productpage.post(base + "/reviews/1").status_code == 403
                denied = productpage.get(base + "/reviews/admin/users")
                assert denied.status_code == 403
                assert denied.json()["error"] == "RBAC: access denied"
                assert productpage.get(base + "/health").status_code == 403
                assert ratings.get(base + "/reviews/1").status_code == 403
            with pytest.raises(httpx.HTTPError):  # STRICT: no plaintext
                httpx.get(f"http://127.0.0.1:{port}/reviews/1", timeout=TIMEOUT)
            # productpage's sidecar sends mTLS to reviews, which requires it (auto mTLS).
            caller = imported(tmp_path / "b", str(policy), "--service", "productpage",
                              f"--endpoint=reviews=127.0.0.1:{port}")["productpage"]
            _with_files(caller, files["productpage"], bundle)
            with testing.running_sidecar(caller) as outbound:
                url = outbound.url("outbound") + "/reviews/2"
                assert (get(url, "reviews").status_code, get(url, "reviews").text) == (
                    200, "reviews")
                refused = httpx.post(url, headers={"host": "reviews"}, timeout=TIMEOUT)
                assert refused.status_code == 403
        assert [r.path for r in app.requests] == ["/reviews/1", "/reviews/2", "/reviews/2"]


@needs_bookinfo
def test_push_to_the_control_plane(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with testing.control.ControlServer(tmp_path / "cp") as cp:
        token = tmp_path / "admin.token"
        token.write_text(cp.admin_token + "\n")
        args = ["import", "istio", str(DR_ALL), str(BOOKINFO / "virtual-service-all-v1.yaml"),
                "--endpoint=reviews/v1=10.0.0.1:9080", "--endpoint=ratings/v1=10.0.0.2:9080",
                "--endpoint=details/v1=10.0.0.3:9080",
                "--endpoint=productpage/v1=10.0.0.4:9080"]
        assert main([*args, "--control", cp.url, "--admin-token-file", str(token)]) == 0
        assert "productpage: version 1 stored" in capsys.readouterr().err
        assert main([*args, "--out", str(tmp_path / "out")]) == 0
        for path in (tmp_path / "out").glob("*.yaml"):
            stored = httpx.get(f"{cp.url}/v1/services/{path.stem}/config", headers=cp.admin,
                               timeout=TIMEOUT).json()
            assert stored["config"] == yaml.safe_load(path.read_text())
        assert main([*args, "--control", cp.url]) == 1
        assert "--control needs the admin token" in capsys.readouterr().err
        # Istio YAML sent as a config is recognised, as `sidemesh validate` does.
        refused = httpx.put(f"{cp.url}/v1/services/reviews/config", content=DR_ALL.read_bytes(),
                            headers={**cp.admin, "content-type": "application/yaml"},
                            timeout=TIMEOUT)
        assert refused.status_code == 422
        (error,) = refused.json()["errors"]
        assert error["rule"] == "istio" and "sidemesh import istio" in error["message"]
