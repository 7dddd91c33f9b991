"""The ``mtls`` policy: terminate mTLS on a listener, originate it on a route.

Python's ``ssl`` does the RFC 5280 path validation against the trust bundle (expiry,
signatures, chain); this policy adds the SPIFFE checks on top (X.509-SVID leaf rules,
trust domain, ``allow`` on the listener side, ``expect`` on the route side).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from sidemesh import (
    ConnectionSetup,
    Policy,
    PolicyContext,
    Request,
    Response,
    SpiffeIdError,
    StashKey,
    SvidError,
    compile_globs,
    parse_spiffe_id,
    spiffe_id_from_cert,
    workload_id,
)

__all__ = ["MtlsPolicy"]

#: per-connection cache of the peer's (SPIFFE ID, problem), in ``ConnectionInfo.stash``.
PEER = StashKey[tuple[str | None, str | None]]("mtls.peer")
FILE_KEYS = ("cert_file", "key_file", "bundle_file")


def _schema() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _trust_domain(context: PolicyContext) -> str:
    return str(context.node.get("trust_domain") or "cluster.local")


def _default_expect(context: PolicyContext) -> str:
    if context.cluster is None:
        raise SpiffeIdError("the route has no cluster to derive `expect` from")
    namespace = str(context.node.get("namespace") or "default")
    return workload_id(_trust_domain(context), namespace, context.cluster.name)


def _denied(reason: str, identity: str | None, allow: list[str]) -> Response:
    # Envoy's RBAC filter answers "RBAC: access denied"; the rest says which rule.
    return Response.json(
        403,
        {
            "error": "RBAC: access denied",
            "reason": reason,
            "identity": identity,
            "rule": {"plugin": "mtls", "allow": allow},
        },
    )


@dataclass(frozen=True)
class _Rule:
    patterns: list[str]
    compiled: Any
    #: written in the config (not the trust-domain-wide default).
    explicit: bool


class MtlsPolicy(Policy):
    """Mutual TLS with SPIFFE identities (see the plugin README for the keys)."""

    name = "mtls"
    schema = _schema()
    authorizes = True

    @classmethod
    def check_config(cls, config: dict[str, Any], context: PolicyContext) -> list[str]:
        errors = []
        given = [k for k in FILE_KEYS if config.get(k)]
        if given and len(given) != len(FILE_KEYS):
            missing = [k for k in FILE_KEYS if k not in given]
            errors.append(
                f"{', '.join(given)} given without {', '.join(missing)}: set all three "
                "(own PKI) or none (certificates from the control plane)"
            )
        for i, pattern in enumerate(config.get("allow") or []):
            if pattern != "*" and not pattern.startswith("spiffe://"):
                errors.append(f"allow[{i}]: {pattern!r} must be '*' or start with 'spiffe://'")
        if context.scope == "route":
            expect = config.get("expect")
            try:
                if expect:
                    if not parse_spiffe_id(expect).path:
                        errors.append(f"expect: {expect} names a trust domain, not a workload")
                else:
                    _default_expect(context)
            except SpiffeIdError as exc:
                what = "expect" if expect else "expect (derived from the cluster name)"
                errors.append(f"{what}: {exc}; set `expect` to the upstream's SPIFFE ID")
        return errors

    def __init__(self, config: dict[str, Any], context: PolicyContext) -> None:
        super().__init__(config, context)
        errors = self.check_config(config, context)
        if errors:
            raise ValueError("mtls: " + "; ".join(errors))
        self.trust_domain = _trust_domain(context)
        # Who authorises requests: a listener-level entry, and a route entry that
        # replaces one (it may narrow the listener's `allow`, never widen or drop it).
        listener = config if context.scope == "listener" else context.replaces
        self._authorizing = listener is not None
        self.mode: str = (listener or config).get("mode") or "strict"
        self._rules = [self._rule(listener)] if listener is not None else []
        if context.scope == "route" and listener is not None and config.get("allow") is not None:
            self._rules.append(self._rule(config))
        # An explicit `allow` is a principals rule: a plaintext peer, which has no
        # principal, never matches one (Istio), even in permissive mode.
        self._plaintext_ok = self.mode == "permissive" and not any(
            rule.explicit for rule in self._rules
        )
        self.allow = self._rules[0].patterns if self._rules else []
        self.expect: str | None = None
        if context.scope == "route":
            self.expect = config.get("expect") or _default_expect(context)
        # Here, not at the top: the registry imports this module in every sidecar, and the
        # certificate machinery (cryptography, httpx) is for those that use mtls.
        from .manager import manager_for

        self.manager = manager_for(config, context.node, context.control)

    # ---------------------------------------------------------------- connections

    def connection_setup(self, setup: ConnectionSetup) -> None:
        # Policies may be created outside the event loop; the CA rotation task starts
        # with the first connection then.
        self.manager.start()
        if setup.kind == "listener":
            if self.context.scope == "listener":
                setup.ssl_context = self.manager.listener_context()
                setup.tls_optional = self.mode == "permissive"
            return
        if self.context.scope != "route":
            return
        # Taken per new connection: after a rotation new connections use the new
        # identity, pooled ones finish with theirs.
        setup.ssl_context = self.manager.require().client_context_for(setup.alpn_protocols)
        setup.verify_peer = self.verify_upstream

    def verify_upstream(self, der: bytes) -> str | None:
        """Route side: ``None`` when the server is ``expect``, else what is wrong."""
        try:
            found = spiffe_id_from_cert(der)
        except SvidError as exc:
            return f"mtls: the upstream's certificate is not a valid X.509-SVID: {exc}"
        if found != self.expect:
            return f"mtls: expected upstream identity {self.expect}, found {found}"
        return None

    # ---------------------------------------------------------------- requests

    def _peer(self, request: Request) -> tuple[str | None, str | None]:
        """(SPIFFE ID, problem) of the downstream peer, computed once per connection."""
        conn = request.connection
        cached = conn.stash.get(PEER, None)
        if cached is not None:
            return cached
        der = conn.peer_certificate
        if not conn.tls or der is None:
            result: tuple[str | None, str | None] = (None, None)
        else:
            try:
                spiffe_id = spiffe_id_from_cert(der)
            except SvidError as exc:
                result = (None, f"the client certificate is not a valid X.509-SVID: {exc}")
            else:
                domain = parse_spiffe_id(spiffe_id).trust_domain
                problem = (
                    None
                    if domain == self.manager.trust_domain
                    else f"{spiffe_id} is outside trust domain {self.manager.trust_domain}"
                )
                result = (spiffe_id, problem)
        conn.stash[PEER] = result
        return result

    def _rule(self, config: dict[str, Any]) -> _Rule:
        allow = config.get("allow")
        patterns = list(allow) if allow is not None else [f"spiffe://{self.trust_domain}/*"]
        return _Rule(patterns, compile_globs(patterns), allow is not None)

    def on_request(self, request: Request) -> Response | None:
        if not self._authorizing:
            return None
        spiffe_id, problem = self._peer(request)
        if problem is not None:
            return _denied(problem, spiffe_id, self.allow)
        if spiffe_id is None:
            if self._plaintext_ok:
                return None
            reason = (
                "mTLS is required (mode strict): the client sent no certificate"
                if self.mode == "strict"
                else "a plaintext client has no identity to match `allow`"
            )
            return _denied(reason, None, self.allow)
        request.peer_identity = spiffe_id
        request.log["peer"] = spiffe_id
        for rule in self._rules:
            if rule.compiled.fullmatch(spiffe_id) is None:
                return _denied(f"{spiffe_id} matches no `allow` pattern", spiffe_id, rule.patterns)
        return None

    def waiting_for(self) -> str | None:
        if self.manager.current() is not None:
            return None
        last = self.manager.last_error
        problem = f" (last error: {last})" if last else ""
        return f"mtls: no certificate yet from {self.manager.source.description}{problem}"

    async def close(self) -> None:
        from .manager import release

        await release(self.manager)
