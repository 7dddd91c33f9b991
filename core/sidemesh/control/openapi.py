"""The OpenAPI 3.1 description of the control API (``GET /openapi.json``).

Its request schemas are also what the API validates request bodies with, so the
document and the behaviour cannot drift apart; a test checks real responses against
its response schemas.
"""

from __future__ import annotations

import copy
from functools import cache, lru_cache
from typing import Any

from jsonschema import Draft202012Validator

from sidemesh import __version__
from sidemesh.control.auth import PROXY_ID_PATTERN, SERVICE_PATTERN, TOKEN_ID_PATTERN
from sidemesh.control.proxy_ids import MAX_PROXIES_PER_SERVICE

__all__ = ["openapi_document", "request_validator"]

_NULLABLE_STR = {"type": ["string", "null"]}
_NULLABLE_INT = {"type": ["integer", "null"]}


def _obj(props: dict[str, Any], required: list[str] | None = None,
         closed: bool = True) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props,
                              "required": required if required is not None else list(props)}
    if closed:
        schema["additionalProperties"] = False
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_PLUGIN_VERSION = _obj(
    {"name": {"type": "string"}, "version": {"type": "string"},
     "distribution": {"type": "string"}},
    required=["name", "version"],
)

SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": {"type": "string"}}, closed=False),
    "ConfigError": _obj({
        "path": {"type": "string", "description": "where, e.g. listeners[0].routes[0]"},
        "message": {"type": "string"},
        "plugin": _NULLABLE_STR,
        "plugin_version": _NULLABLE_STR,
        "rule": _NULLABLE_STR,
    }),
    "ConfigInvalid": _obj({"error": {"type": "string"},
                           "errors": {"type": "array", "items": _ref("ConfigError"),
                                      "minItems": 1}}),
    "Stored": _obj({"service": {"type": "string"}, "version": {"type": "integer", "minimum": 1},
                    "digest": {"type": "string"},
                    "unchanged": {"type": "boolean",
                                  "description": "true when the config equals the head, "
                                                 "which is returned as is"}}),
    "Valid": _obj({"valid": {"const": True}, "errors": {"type": "array", "maxItems": 0}}),
    "VersionSummary": _obj({
        "version": {"type": "integer", "minimum": 1},
        "digest": {"type": "string"},
        "created_at": {"type": "number", "description": "Unix time"},
        "author": {"type": "string"},
        "rollback_of": _NULLABLE_INT,
    }),
    "ServiceConfig": _obj({
        "service": {"type": "string"},
        "version": {"type": "integer", "minimum": 1},
        "digest": {"type": "string"},
        "created_at": {"type": "number"},
        "author": {"type": "string"},
        "rollback_of": _NULLABLE_INT,
        "config": {"type": "object", "description": "the sidecar config (SPEC section 1)"},
        "endpoints": {"type": "object", "additionalProperties": {
            "type": "array", "items": _ref("Endpoint")},
            "description": "watch only: the live instances of each service the config's "
                           "clusters name (`service:`)"},
        "endpoints_version": {"type": "string",
                              "description": "watch only: a digest of `endpoints`"},
    }, required=["service", "version", "digest", "created_at", "author", "rollback_of",
                 "config"]),
    "Endpoint": _obj({"address": {"type": "string"},
                      "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                      "id": {"type": "string"}}),
    "InstanceRequest": _obj({
        "address": {"type": "string", "minLength": 3, "maxLength": 261,
                    "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$",
                    "description": "host:port where the instance takes traffic (its "
                                   "inbound listener)"},
        "labels": {"type": "object", "maxProperties": 64, "default": {},
                   "additionalProperties": {"type": "string", "maxLength": 256},
                   "description": "e.g. version: v2, for subsets and splits"},
        "identity": {**_NULLABLE_STR, "maxLength": 2048,
                     "description": "its SPIFFE id"},
        "ttl": {"type": "number", "minimum": 1, "maximum": 300, "default": 10,
                "description": "seconds it stays registered without another PUT"},
    }, required=["address"]),
    "Registered": _obj({"service": {"type": "string"}, "id": {"type": "string"},
                        "ttl": {"type": "number"},
                        "expires_at": {"type": "number", "description": "Unix time"}}),
    "Instance": _obj({
        "id": {"type": "string"}, "address": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "identity": _NULLABLE_STR,
        "registered_at": {"type": "number", "description": "Unix time"},
        "expires_at": {"type": "number", "description": "Unix time, unless heartbeated"},
        "ttl_left": {"type": "number", "description": "seconds until expires_at"},
        "health": {"enum": ["HEALTHY"], "description": "listed instances are live (one "
                                                        "past its TTL is removed)"},
    }),
    "Endpoints": _obj({"service": {"type": "string"},
                       "endpoints": {"type": "array", "items": _ref("Instance")}}),
    "History": _obj({"service": {"type": "string"},
                     "versions": {"type": "array", "items": _ref("VersionSummary")}}),
    "RollbackRequest": _obj({"version": {"type": "integer", "minimum": 1}}),
    "Rollback": _obj({"service": {"type": "string"}, "version": {"type": "integer"},
                      "digest": {"type": "string"}, "rollback_of": {"type": "integer"}}),
    "PluginSchema": _obj({
        "name": {"type": "string"}, "version": {"type": "string"},
        "distribution": {"type": "string"}, "schema_id": {"type": "string"},
        "schema": {"type": "object"},
    }),
    "PluginVersion": _PLUGIN_VERSION,
    "StatusRequest": _obj({
        "service": {"type": "string", "pattern": SERVICE_PATTERN},
        "state": {"enum": ["ACK", "NACK"]},
        "version": {"type": "integer", "minimum": 1,
                    "description": "the version acknowledged or rejected"},
        "applied_version": {**_NULLABLE_INT,
                            "description": "the version being served (after a NACK, the "
                                           "previous one)"},
        "error": {**_NULLABLE_STR, "maxLength": 65536},
        "plugins": {"type": "array", "items": _ref("PluginVersion"), "maxItems": 1000},
    }, required=["service", "state", "version", "plugins"]),
    "StatusRecorded": _obj({"id": {"type": "string"}, "recorded": {"const": True}}),
    "Proxy": _obj({
        "id": {"type": "string"},
        "service": {"type": "string"},
        "state": {"enum": ["ACK", "NACK", None]},
        "version": _NULLABLE_INT,
        "applied_version": _NULLABLE_INT,
        "error": _NULLABLE_STR,
        "plugins": {"type": "array", "items": _ref("PluginVersion")},
        "last_seen": {"type": "number", "description": "Unix time"},
    }),
    "Proxies": _obj({"proxies": {"type": "array", "items": _ref("Proxy")}}),
    "CertificateRequest": _obj({
        "csr": {"type": "string", "maxLength": 65536, "description": "PEM PKCS#10"},
        "ttl": {"type": "number", "exclusiveMinimum": 0,
                "description": "lifetime in seconds (default 24h)"},
    }, required=["csr"]),
    "Certificate": _obj({"certificate": {"type": "string"}, "trust_bundle": {"type": "string"},
                         "expires_at": {"type": "string"}}),
    "TrustBundle": _obj({"trust_domain": {"type": "string"},
                         "trust_bundle": {"type": "string"}}),
    "TokenRequest": _obj({
        "service": {"type": "string", "pattern": SERVICE_PATTERN},
        "ttl": {"type": "number", "exclusiveMinimum": 0,
                "description": "lifetime in seconds (default: no expiry)"},
    }, required=["service"]),
    "Token": _obj({"id": {"type": "string"}, "service": {"type": "string"},
                   "token": {"type": "string"}, "created_at": {"type": "number"},
                   "expires_at": {"type": ["number", "null"]}}),
    "TokenInfo": _obj({
        "id": {"type": "string", "description": "what DELETE /v1/tokens/{id} takes"},
        "service": {"type": "string"},
        "created_at": {"type": "number", "description": "Unix time"},
        "expires_at": {"type": ["number", "null"], "description": "null: never"},
        "revoked_at": {"type": ["number", "null"], "description": "null: not revoked"},
        "state": {"enum": ["active", "expired", "revoked"]},
    }),
    "Tokens": _obj({"tokens": {"type": "array", "items": _ref("TokenInfo")}}),
    "Health": _obj({"status": {"const": "ok"},
                    "store": {"type": "string", "description": "sqlite or etcd"},
                    "version": {"type": "string",
                                "description": "the control plane's sidemesh version"}}),
    "Unhealthy": _obj({"status": {"const": "unavailable"}, "store": {"type": "string"},
                       "version": {"type": "string"},
                       "error": {"type": "string",
                                 "description": "the store's error, or that it did not "
                                                "answer in time"}}),
}


def _json(schema: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": _ref(schema)}}}


def _resp(description: str, schema: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out.update(_json(schema))
    return out


_ERRORS = {
    "401": _resp("missing, invalid, expired or revoked token", "Error"),
    "403": _resp("the token may not do this", "Error"),
}
_BODY_ERRORS = {
    "413": _resp("body larger than the limit", "Error"),
    "415": _resp("unsupported content type", "Error"),
}
#: Any call that writes to the store.
_STORE_ERRORS = {
    "503": _resp("the store cannot write (an I/O error, locked): SQLite's error", "Error"),
    "507": _resp("the store cannot write: the disk is full", "Error"),
}
_PROXY_LIMIT = {"429": _resp(f"a new proxy id, but the service already has "
                             f"{MAX_PROXIES_PER_SERVICE} in use", "Error")}
_SERVICE_PARAM = {"name": "service", "in": "path", "required": True,
                  "schema": {"type": "string", "pattern": SERVICE_PATTERN}}
_CONFIG_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"type": "object"}},
        "application/yaml": {"schema": {"type": "string"}},
    },
}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": responses, **extra}


def _paths() -> dict[str, Any]:
    return {
        "/v1/services/{service}/config": {
            "parameters": [_SERVICE_PARAM],
            "put": _op("store a new config version (validated in full first)", {
                "200": _resp("stored (or unchanged)", "Stored"),
                "422": _resp("invalid config: every error", "ConfigInvalid"),
                **_ERRORS, **_BODY_ERRORS, **_STORE_ERRORS,
            }, requestBody=_CONFIG_BODY),
            "get": _op("the current config (or ?version=N)", {
                "200": _resp("the config", "ServiceConfig"),
                "404": _resp("no config (or no such version)", "Error"), **_ERRORS,
            }, parameters=[{"name": "version", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1}}]),
        },
        "/v1/services/{service}/history": {
            "parameters": [_SERVICE_PARAM],
            "get": _op("every stored version, newest first",
                       {"200": _resp("history", "History"), **_ERRORS}),
        },
        "/v1/services/{service}/rollback": {
            "parameters": [_SERVICE_PARAM],
            "post": _op("make an old version's content the new head", {
                "200": _resp("the new version", "Rollback"),
                "404": _resp("no such version", "Error"),
                "422": _resp("invalid request", "Error"), **_ERRORS, **_BODY_ERRORS,
                **_STORE_ERRORS,
            }, requestBody={"required": True, **_json("RollbackRequest")}),
        },
        "/v1/services/{service}/watch": {
            "parameters": [_SERVICE_PARAM],
            "get": _op("long poll for a version newer than `after`", {
                "200": _resp("the config", "ServiceConfig"),
                "304": {"description": "no newer version before the timeout"},
                "422": _resp("bad query parameter", "Error"), **_ERRORS, **_PROXY_LIMIT,
                **_STORE_ERRORS,
            }, parameters=[
                {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                             "default": 0}},
                {"name": "timeout", "in": "query", "description": "seconds (default 30, "
                 "at most 300)", "schema": {"type": "number", "minimum": 0, "default": 30,
                                            "maximum": 300}},
                {"name": "proxy", "in": "query", "description": "the caller's proxy id, "
                 "to update its last-seen time (an id another service has is a 403)",
                 "schema": {"type": "string", "pattern": PROXY_ID_PATTERN}},
                {"name": "endpoints_version", "in": "query", "description": "the endpoints "
                 "version the caller has: also answered when the endpoints of the services "
                 "its config names differ", "schema": {"type": "string"}},
            ]),
        },
        "/v1/services/{service}/instances/{id}": {
            "parameters": [_SERVICE_PARAM, {"name": "id", "in": "path", "required": True,
                                            "schema": {"type": "string",
                                                       "pattern": PROXY_ID_PATTERN}}],
            "put": _op("register an instance of the service, or heartbeat it (admin or the "
                       "service's token)", {
                "200": _resp("registered until expires_at", "Registered"),
                "422": _resp("invalid request", "Error"), **_ERRORS, **_BODY_ERRORS,
                **_STORE_ERRORS,
            }, requestBody={"required": True, **_json("InstanceRequest")}),
            "delete": _op("deregister an instance (admin or the service's token)", {
                "204": {"description": "deregistered"},
                "404": _resp("no such instance", "Error"),
                "422": _resp("invalid service or id", "Error"), **_ERRORS, **_STORE_ERRORS,
            }),
        },
        "/v1/services/{service}/endpoints": {
            "parameters": [_SERVICE_PARAM],
            "get": _op("the live registered instances (admin or the service's token)", {
                "200": _resp("the instances, by id", "Endpoints"),
                "422": _resp("invalid service", "Error"), **_ERRORS,
            }),
        },
        "/v1/validate": {
            "post": _op("validate a config without storing it", {
                "200": _resp("valid", "Valid"),
                "422": _resp("invalid config: every error", "ConfigInvalid"),
                **_ERRORS, **_BODY_ERRORS,
            }, requestBody=_CONFIG_BODY),
        },
        "/v1/schemas": {
            "get": _op("the composed JSON Schema of sidemesh.yaml",
                       {"200": {"description": "JSON Schema (Draft 2020-12)",
                                "content": {"application/json": {"schema": {
                                    "type": "object"}}}}, **_ERRORS}),
        },
        "/v1/schemas/{plugin}": {
            "parameters": [{"name": "plugin", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "get": _op("one plugin's config schema, version and distribution", {
                "200": _resp("the plugin", "PluginSchema"),
                "404": _resp("no such plugin", "Error"), **_ERRORS,
            }),
        },
        "/v1/proxies/{id}/status": {
            "parameters": [{"name": "id", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": PROXY_ID_PATTERN}}],
            "post": _op("report ACK or NACK (an id another service has is a 403)", {
                "200": _resp("recorded", "StatusRecorded"),
                "422": _resp("invalid request", "Error"), **_ERRORS, **_BODY_ERRORS,
                **_PROXY_LIMIT, **_STORE_ERRORS,
            }, requestBody={"required": True, **_json("StatusRequest")}),
        },
        "/v1/proxies": {
            "get": _op("every proxy seen", {"200": _resp("proxies", "Proxies"), **_ERRORS}),
        },
        "/v1/certificates": {
            "post": _op("sign a CSR for the caller's service (an X.509-SVID)", {
                "200": _resp("the certificate", "Certificate"),
                "422": _resp("refused request", "Error"), **_ERRORS, **_BODY_ERRORS,
            }, requestBody={"required": True, **_json("CertificateRequest")}),
        },
        "/v1/trust-bundle": {
            "get": _op("the CA certificate of a trust domain", {
                "200": {"description": "the bundle",
                        "content": {"application/json": {"schema": _ref("TrustBundle")},
                                    "application/x-pem-file": {"schema": {"type": "string"}}}},
                "404": _resp("not a trust domain of this control plane", "Error"),
                "422": _resp("invalid trust domain", "Error"),
            }, security=[], parameters=[{"name": "trust_domain", "in": "query", "schema": {
                "type": "string", "default": "cluster.local"}}]),
        },
        "/v1/tokens": {
            "post": _op("issue a sidecar token bound to one service", {
                "200": _resp("the token (shown once)", "Token"),
                "422": _resp("invalid request", "Error"), **_ERRORS, **_BODY_ERRORS,
                **_STORE_ERRORS,
            }, requestBody={"required": True, **_json("TokenRequest")}),
            "get": _op("every sidecar token issued (never its secret)", {
                "200": _resp("the tokens, oldest first", "Tokens"),
                "422": _resp("invalid service", "Error"), **_ERRORS,
            }, parameters=[{"name": "service", "in": "query", "required": False,
                            "schema": {"type": "string", "pattern": SERVICE_PATTERN}}]),
        },
        "/v1/tokens/{id}": {
            "parameters": [{"name": "id", "in": "path", "required": True,
                            "schema": {"type": "string", "pattern": TOKEN_ID_PATTERN}}],
            "delete": _op("revoke a sidecar token: refused from now on, its long polls too", {
                "200": _resp("the revoked token", "TokenInfo"),
                "404": _resp("no such token", "Error"),
                "422": _resp("not a token id", "Error"), **_ERRORS, **_STORE_ERRORS,
            }),
        },
        "/healthz": {
            "get": _op("whether the control plane can serve: its store answers a read "
                       "within 2 s (no token: for load balancers and probes)", {
                "200": _resp("healthy", "Health"),
                "503": _resp("the store is unavailable", "Unhealthy"),
            }, security=[]),
        },
        "/metrics": {
            "get": _op("Prometheus metrics (no token: docs/security.md)", {
                "200": {"description": "Prometheus text format", "content": {
                    "text/plain": {"schema": {"type": "string"}}}},
            }, security=[]),
        },
        "/openapi.json": {
            "get": _op("this document", {"200": {"description": "OpenAPI 3.1", "content": {
                "application/json": {"schema": {"type": "object"}}}}, **_ERRORS}),
        },
    }


@lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "sidemesh control plane", "version": __version__},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document (a fresh copy)."""
    return copy.deepcopy(_document())


@cache
def request_validator(name: str) -> Draft202012Validator:
    """A validator for the component schema ``name`` (its ``$ref``s resolve)."""
    return Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": {"schemas": SCHEMAS}}
    )
