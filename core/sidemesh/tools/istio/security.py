"""PeerAuthentication and AuthorizationPolicy -> a service's inbound listener: the mtls
plugin's mode and principals, and routes that deny what the rules do not allow.

What cannot be expressed is reported, and the translation errs on the side of denying:
an ALLOW rule with a condition sidemesh cannot check is left out, a DENY rule's such
condition is dropped (the rule denies more)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sidemesh.tools.istio.authz import ANYONE, Op, Rule, collapse, decide, pattern, regions
from sidemesh.tools.istio.resources import Options, Report, Resource, labels_service

__all__ = ["Inbound", "Policies", "inbound"]

_SOURCE_KEYS = ("principals", "namespaces", "notPrincipals", "requestPrincipals",
                "notRequestPrincipals", "notNamespaces", "ipBlocks", "notIpBlocks",
                "remoteIpBlocks", "notRemoteIpBlocks")
_OP_KEYS = ("hosts", "paths", "methods", "ports", "notHosts", "notPaths", "notMethods",
            "notPorts")


@dataclass
class Inbound:
    """The mtls listener entry (``mode`` None: none) and the routes, in order, each a
    match and whether it denies."""

    mode: str | None = None
    allow: list[str] | None = None
    routes: list[tuple[dict[str, Any], bool]] = field(default_factory=list)


@dataclass
class Policies:
    peer: list[Resource] = field(default_factory=list)
    authorization: list[Resource] = field(default_factory=list)


def _applies(resource: Resource, service: str, namespace: str, options: Options,
             report: Report) -> bool | None:
    """Whether the policy applies to the service: ``None`` for a namespace- or
    mesh-wide policy (no selector) that does."""
    selector = resource.spec.get("selector")
    labels = selector.get("matchLabels") if isinstance(selector, dict) else None
    if resource.spec.get("targetRef") or resource.spec.get("targetRefs"):
        report.loss(resource, "spec.targetRef", "sidemesh applies policies to services named "
                    "by a selector: the policy is not applied")
        return False
    if not labels:
        wide = resource.namespace in (namespace, options.root_namespace)
        return None if wide else False
    target = labels_service(labels)
    if target is None:
        report.loss(resource, "spec.selector", "names no service (an app label): the policy "
                    "is not applied")
        return False
    if len(labels) > 1:
        report.loss(resource, "spec.selector", "sidemesh tells workloads apart by service "
                    f"(the app label) only: applied to every instance of {target}")
    return resource.namespace == namespace and target == service


def _mode(service: str, namespace: str, policies: list[Resource], options: Options,
          report: Report) -> tuple[str | None, Resource | None]:
    levels: list[list[Resource]] = [[], [], []]
    for pa in policies:
        applies = _applies(pa, service, namespace, options, report)
        if applies:
            levels[0].append(pa)
        elif applies is None:
            levels[1 if pa.namespace == namespace else 2].append(pa)
    for level in levels:
        for pa in level[1:]:
            report.loss(pa, "spec", f"{level[0].kind}/{level[0].name} already applies at the "
                        "same level: as Istio, one is used")
        if level:
            pa = level[0]
            for port in pa.spec.get("portLevelMtls") or {}:
                report.loss(pa, f"spec.portLevelMtls.{port}", "sidemesh has one inbound "
                            "listener per service: the mode of one port is not applied")
            report.unknown(pa, "spec", pa.spec, ("selector", "mtls", "portLevelMtls"))
            mtls = pa.spec.get("mtls")
            mode = mtls.get("mode") if isinstance(mtls, dict) else None
            if mode and mode != "UNSET":
                return str(mode), pa
    return None, None


def _items(value: dict[str, Any], key: str, path: str) -> list[Any]:
    items = value.get(key) or []
    if not isinstance(items, list):
        raise TypeError(f"{path}.{key} is not a list")
    return items


def _principals(source: dict[str, Any], options: Options) -> frozenset[str] | None:
    globs = {p if p == "*" else f"spiffe://{p}" for p in source.get("principals") or []}
    globs |= {f"spiffe://{options.trust_domain}/ns/{n}/sa/*"
              for n in source.get("namespaces") or []}
    return frozenset(globs) if globs else ANYONE


def _sources(rule: dict[str, Any], deny: bool, ap: Resource, path: str, options: Options,
             report: Report) -> list[frozenset[str] | None]:
    found = []
    for i, item in enumerate(_items(rule, "from", path) or [{"source": {}}]):
        source = item.get("source") if isinstance(item, dict) else None
        where = f"{path}.from[{i}].source"
        if not isinstance(source, dict):
            report.loss(ap, where, "not a source: left out")
            continue
        extra = [k for k in source if k not in ("principals", "namespaces")]
        if source.get("principals") and source.get("namespaces"):
            extra.append("namespaces")
        for key in extra:
            report.loss(ap, f"{where}.{key}", "sidemesh authorises by principal or namespace "
                        "alone: " + ("the condition is dropped (denying more)" if deny
                                     else "the source is left out (allowing less)"))
        if extra and not deny:
            continue
        found.append(ANYONE if deny and extra else _principals(source, options))
    return found


def _ops(rule: dict[str, Any], deny: bool, ap: Resource, path: str,
         report: Report) -> list[Op]:
    ops = []
    for i, item in enumerate(_items(rule, "to", path) or [{"operation": {}}]):
        operation = item.get("operation") if isinstance(item, dict) else None
        if not isinstance(operation, dict):
            report.loss(ap, f"{path}.to[{i}].operation", "not an operation: left out")
            continue
        extra = [k for k in operation if k not in ("hosts", "paths", "methods")]
        for key in extra:
            report.loss(ap, f"{path}.to[{i}].operation.{key}", "sidemesh matches hosts, paths "
                        "and methods only: " + ("the condition is dropped (denying more)"
                                                if deny else "the operation is left out"))
        if extra and not deny:
            continue

        def dim(key: str, op: dict[str, Any] = operation) -> tuple[Any, ...] | None:
            values = [pattern(str(v)) for v in op.get(key) or []]
            return None if not values or None in values else tuple(values)

        ops.append(Op(dim("hosts"), dim("paths"), dim("methods")))
    return ops


def _rules(ap: Resource, options: Options, report: Report) -> list[Rule]:
    deny = ap.spec.get("action", "ALLOW") == "DENY"
    rules = []
    for i, rule in enumerate(_items(ap.spec, "rules", "spec")):
        path = f"spec.rules[{i}]"
        if not isinstance(rule, dict):
            report.loss(ap, path, "not a rule: left out")
            continue
        if rule.get("when"):
            report.loss(ap, f"{path}.when", "sidemesh has no request conditions: " + (
                "the rule denies without them" if deny else "the rule is left out"))
            if not deny:
                continue
        sources = _sources(rule, deny, ap, path, options, report)
        ops = _ops(rule, deny, ap, path, report)
        if not sources or not ops:
            continue
        principals = ANYONE if ANYONE in sources else frozenset().union(
            *[s for s in sources if s is not None])
        if deny and principals is not ANYONE:
            report.loss(ap, f"{path}.from", "sidemesh cannot deny some principals and not "
                        "others on a route: the rule denies everyone")
        rules.append(Rule(principals, tuple(ops), deny))
    return rules


def _authorization(service: str, namespace: str, policies: list[Resource], options: Options,
                   report: Report) -> tuple[list[Rule], bool]:
    rules: list[Rule] = []
    allow_policies = False
    for ap in policies:
        if _applies(ap, service, namespace, options, report) is False:
            continue
        action = ap.spec.get("action", "ALLOW")
        if action in ("AUDIT", "CUSTOM"):
            report.loss(ap, "spec.action", f"{action}: sidemesh has no audit log or external "
                        "authorizer: the policy is not applied")
            continue
        report.unknown(ap, "spec", ap.spec, ("selector", "action", "rules", "provider"))
        allow_policies = allow_policies or action == "ALLOW"
        rules += _rules(ap, options, report)
    return rules, allow_policies


def inbound(service: str, namespace: str, policies: Policies, options: Options,
            report: Report) -> Inbound:
    where = f"service {service}"
    mode, pa = _mode(service, namespace, policies.peer, options, report)
    rules, allow_policies = _authorization(service, namespace, policies.authorization,
                                           options, report)
    listener, decisions = decide(rules, allow_policies)
    _, mixed = regions(rules)
    for dim in mixed:
        report.loss(where, "", f"authorization {dim} mix prefix and suffix patterns: a request "
                    "matching both gets the rules of the suffix pattern only")
    for decision in decisions:
        if decision.narrowed is not None:
            who = "any client" if decision.narrowed is ANYONE else ", ".join(
                sorted(decision.narrowed)) or "nobody"
            report.loss(where, "", f"requests matching {decision.region.match()} are denied "
                        f"to everyone: Istio allows {who} there, fewer principals than the "
                        "listener lets in, which only a route originating mTLS could narrow")
    decisions = collapse(decisions)
    result = Inbound(routes=[(d.region.match(), d.deny) for d in decisions])
    needs_mtls = listener is not ANYONE or any(d.deny for d in decisions)
    if mode in ("STRICT", "PERMISSIVE"):
        result.mode = mode.lower()
    elif needs_mtls:
        result.mode = "permissive"
        if mode == "DISABLE" and pa is not None:
            report.note(pa, "spec.mtls.mode", "DISABLE: sidemesh needs the mtls plugin on the "
                        "listener to deny requests; permissive mode still accepts plaintext")
    if listener is not None:
        result.allow = sorted(listener)
    return result
