"""GET /openapi.json describes what the control API really does: every response below,
from a real server, validates against the schema the document gives for its path,
method and status code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jsonschema import Draft202012Validator

from sidemesh.testing.control import ControlServer


def _config(prefix: str = "/") -> dict[str, Any]:
    return {
        "node": {"service": "web"},
        "clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1:9"}]}],
        "listeners": [{"name": "in", "address": "127.0.0.1:0",
                       "routes": [{"name": "app", "match": {"prefix": prefix},
                                   "cluster": "app"}]}],
    }


def _template(spec: dict[str, Any], path: str) -> str:
    for template in spec["paths"]:
        pattern = "^" + re.sub(r"\{[^/]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path):
            return str(template)
    raise AssertionError(f"{path} is not in the OpenAPI document")


def _check(spec: dict[str, Any], response: httpx.Response) -> None:
    request = response.request
    template = _template(spec, request.url.path)
    operation = spec["paths"][template].get(request.method.lower())
    assert operation is not None, f"{request.method} {template} is not documented"
    documented = operation["responses"].get(str(response.status_code))
    assert documented is not None, (
        f"{request.method} {template} answered {response.status_code}, not documented")
    content = documented.get("content")
    if content is None:
        assert not response.content
        return
    media = response.headers["content-type"].split(";")[0]
    assert media in content, f"{media} not documented for {template}"
    if media != "application/json":
        return
    schema = {**content[media]["schema"], "components": spec["components"]}
    errors = list(Draft202012Validator(schema).iter_errors(response.json()))
    assert not errors, f"{request.method} {template} {response.status_code}: {errors[0]}"


def _csr() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def test_every_response_matches_the_openapi_document(tmp_path: Path) -> None:
    with ControlServer(tmp_path) as cp, httpx.Client(base_url=cp.url, timeout=10) as http:
        spec = http.get("/openapi.json", headers=cp.admin).json()
        assert spec["openapi"].startswith("3.1")
        Draft202012Validator.check_schema({"components": spec["components"]})
        admin = cp.admin
        web = cp.headers("web")
        bad = _config()
        bad["listeners"][0]["routes"][0]["cluster"] = "nowhere"
        status = {"service": "web", "state": "ACK", "version": 1,
                  "plugins": [{"name": "retry", "version": "0.1.0"}]}
        responses = [
            http.put("/v1/services/web/config", json=_config(), headers=admin),
            http.put("/v1/services/web/config", json=_config(), headers=admin),
            http.put("/v1/services/web/config", json=bad, headers=admin),
            http.put("/v1/services/web/config", json=_config(), headers=web),
            http.put("/v1/services/web/config", content=b"x" * (1024 * 1024 + 1),
                     headers=admin),
            http.put("/v1/services/web/config", content=b"x", headers={
                **admin, "content-type": "text/plain"}),
            http.put("/v1/services/web/config", json=_config("/b"), headers=admin),
            http.get("/v1/services/web/config", headers=web),
            http.get("/v1/services/web/config", params={"version": 1}, headers=admin),
            http.get("/v1/services/nothing/config", headers=admin),
            http.get("/v1/services/web/config"),
            http.get("/v1/services/web/history", headers=admin),
            http.post("/v1/services/web/rollback", json={"version": 1}, headers=admin),
            http.post("/v1/services/web/rollback", json={"version": 99}, headers=admin),
            http.post("/v1/services/web/rollback", json={"v": 1}, headers=admin),
            http.get("/v1/services/web/watch", params={"after": 0}, headers=web),
            http.get("/v1/services/web/watch", params={"after": 3, "timeout": 0.1},
                     headers=web),
            http.get("/v1/services/web/watch", params={"timeout": "x"}, headers=web),
            http.post("/v1/validate", json=_config(), headers=admin),
            http.post("/v1/validate", json=bad, headers=admin),
            http.get("/v1/schemas", headers=admin),
            http.get("/v1/schemas/mtls", headers=admin),
            http.get("/v1/schemas/nope", headers=admin),
            http.post("/v1/proxies/web-1/status", json=status, headers=web),
            http.post("/v1/proxies/web-1/status", json={**status, "x": 1}, headers=web),
            http.get("/v1/proxies", headers=admin),
            http.get("/v1/proxies", headers=web),
            http.post("/v1/certificates", json={"csr": _csr()}, headers=web),
            http.post("/v1/certificates", json={"csr": "junk"}, headers=web),
            http.get("/v1/trust-bundle"),
            http.get("/v1/trust-bundle", headers={"accept": "application/x-pem-file"}),
            http.get("/v1/trust-bundle", params={"trust_domain": "Not A Domain!"}),
            http.get("/v1/trust-bundle", params={"trust_domain": "unknown.example"}),
            http.get("/openapi.json"),
            http.get("/openapi.json", headers=web),
            http.get("/v1/services/web/watch", params={"proxy": "../x"}, headers=web),
            http.post("/v1/tokens", json={"service": "api"}, headers=admin),
            http.post("/v1/tokens", json={"service": "bad name"}, headers=admin),
            http.put("/v1/services/web/instances/web-1", json={
                "address": "127.0.0.1:8080", "labels": {"version": "v1"}}, headers=web),
            http.put("/v1/services/web/instances/web-1", json={"address": "x"}, headers=web),
            http.put("/v1/services/api/instances/a-1", json={"address": "127.0.0.1:1"},
                     headers=web),
            http.get("/v1/services/web/endpoints", headers=web),
            http.delete("/v1/services/web/instances/web-1", headers=web),
            http.delete("/v1/services/web/instances/web-1", headers=web),
        ]
        statuses = set()
        for response in responses:
            _check(spec, response)
            statuses.add(response.status_code)
        assert {200, 304, 401, 403, 404, 413, 415, 422} <= statuses
