"""Reading YAML configs safely.

Safe types only; no anchors or aliases (a ``billion laughs`` document expands aliases
exponentially, and configs never need them); duplicate keys are errors rather than the
last one silently winning; dates stay strings; a size cap; and a nesting limit (the
parser and every walk over the document recurse once per level: 20,000 ``[`` would
exhaust Python's stack).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node

from sidemesh.config.errors import ConfigError, ConfigInvalid

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_NESTING",
    "check_nesting",
    "istio_error",
    "parse_documents",
    "parse_yaml",
]

MAX_CONFIG_BYTES = 4 * 1024 * 1024
#: Lists and mappings inside each other, the document itself being level 1. Real
#: configs need about ten.
MAX_NESTING = 64
_TOO_DEEP = f"nested deeper than {MAX_NESTING} levels (lists and mappings inside each other)"


class _TooDeep(yaml.MarkedYAMLError):
    """The nesting limit (reported with its own rule, not as a syntax error)."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader without aliases, duplicate keys, implicit timestamps or deep nesting."""

    nesting = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.MarkedYAMLError(
                problem="anchors and aliases (&name, *name) are not allowed in sidemesh configs",
                problem_mark=mark,
            )
        if not isinstance(event, yaml.CollectionStartEvent):
            return super().compose_node(parent, index)
        # Refused while composing, before the recursion gets deep: construction and
        # validation then never see such a document.
        if self.nesting >= MAX_NESTING:
            raise _TooDeep(problem=_TOO_DEEP, problem_mark=mark)
        self.nesting += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.nesting -= 1

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, str):
                    raise ConstructorError(
                        None, None, f"keys must be strings, found {key!r}", key_node.start_mark
                    )
                if key in seen:
                    raise ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]


# YAML 1.1 turns 2026-01-01 into a date, which JSON (the schema, the digest, the control
# plane) cannot carry.
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _where(error: yaml.YAMLError, source: str) -> str:
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return source
    return f"{source}:{mark.line + 1}:{mark.column + 1}"


def _text(text: str | bytes, source: str) -> str:
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigInvalid([ConfigError(
            "", f"{source}: config is {len(text)} bytes, more than the "
            f"{MAX_CONFIG_BYTES} allowed", rule="size")])
    if isinstance(text, bytes):
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigInvalid([ConfigError(
                "", f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})",
                rule="yaml")]) from None
    return text


def _syntax_error(exc: yaml.YAMLError, source: str) -> ConfigInvalid:
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    detail = f"{context}, {problem}" if context and "expected a single" not in context \
        else problem
    if "expected a single document" in str(exc):
        detail = "more than one YAML document ('---'); put one config per file"
    detail = re.sub(r"\s+", " ", str(detail)).strip()
    rule = "nesting" if isinstance(exc, _TooDeep) else "yaml"
    return ConfigInvalid([ConfigError("", f"{_where(exc, source)}: {detail}", rule=rule)])


def parse_documents(text: str | bytes, source: str = "<config>") -> list[Any]:
    """Parse every document of a YAML stream (``---`` between them) with the same rules
    as :func:`parse_yaml`; empty documents are left out.

    :raises ConfigInvalid: with the line and column of a syntax error.
    """
    loader = _StrictLoader(_text(text, source))
    documents: list[Any] = []
    try:
        while loader.check_data():
            document = loader.get_data()
            if document is not None:
                documents.append(document)
    except yaml.YAMLError as exc:
        raise _syntax_error(exc, source) from None
    finally:
        loader.dispose()
    return documents


#: The API groups of Istio's resources: networking.istio.io, security.istio.io, ...
_ISTIO_API = re.compile(r"^[a-z0-9.-]*\.istio\.io/")


def istio_error(
    documents: Sequence[Any], where: str = "", command_file: str = "FILE"
) -> ConfigError | None:
    """The error for documents that are Istio resources rather than a sidemesh config
    (``None`` when none is): it names the resource and the command that converts it,
    instead of the schema errors such a document would otherwise get.

    :param where: prefix of the message, e.g. the file name and ``": "``.
    """
    found = [d for d in documents if isinstance(d, dict) and isinstance(d.get("apiVersion"), str)
             and _ISTIO_API.match(d["apiVersion"])]
    if not found:
        return None
    first = found[0]
    kind = first.get("kind") if isinstance(first.get("kind"), str) else "resource"
    more = len(found) - 1
    others = f" and {more} more Istio resource{'s' if more != 1 else ''}" if more else ""
    return ConfigError(
        "", f"{where}this is an Istio {kind} ({first['apiVersion']}){others}, not a sidemesh "
        f"config; convert it with `sidemesh import istio {command_file}`", rule="istio")


def parse_yaml(
    text: str | bytes, source: str = "<config>", command_file: str = "FILE"
) -> dict[str, Any]:
    """Parse one YAML document that must be a mapping.

    :param source: the file name (or other origin) used in error messages.
    :param command_file: how ``sidemesh import istio`` would name the input, in the
        error for an Istio resource.
    :raises ConfigInvalid: with the line and column of a syntax error, or what is wrong
        with the document as a whole.
    """
    text = _text(text, source)
    loader = _StrictLoader(text)
    try:
        doc = loader.get_single_data()
    except yaml.YAMLError as exc:
        error = _syntax_error(exc, source)
        if "expected a single document" in str(exc):
            # Istio's YAML usually comes several resources to a file.
            with contextlib.suppress(ConfigInvalid):
                istio = istio_error(parse_documents(text, source), f"{source}: ", command_file)
                if istio is not None:
                    error = ConfigInvalid([istio])
        raise error from None
    finally:
        loader.dispose()
    if doc is None:
        raise ConfigInvalid([ConfigError("", f"{source}: the document is empty", rule="yaml")])
    if not isinstance(doc, dict):
        kind = type(doc).__name__
        raise ConfigInvalid([ConfigError(
            "", f"{source}: the document must be a mapping (node:, clusters:, "
            f"listeners: ...), got a {kind}", rule="yaml")])
    istio = istio_error([doc], f"{source}: ", command_file)
    if istio is not None:
        raise ConfigInvalid([istio])
    return doc


def check_nesting(doc: Any, source: str = "<config>") -> Any:
    """``doc`` (parsed from JSON, say) when no list or mapping in it is nested deeper than
    :data:`MAX_NESTING` levels, the limit :func:`parse_yaml` applies.

    :raises ConfigInvalid: with the rule ``nesting``.
    """
    # Iterative: a document as deep as the JSON parser allows must not exhaust the stack
    # here either.
    stack: list[tuple[Any, int]] = [(doc, 1)] if isinstance(doc, dict | list) else []
    while stack:
        value, depth = stack.pop()
        children = value.values() if isinstance(value, dict) else value
        if depth > MAX_NESTING:
            raise ConfigInvalid([ConfigError("", f"{source}: {_TOO_DEEP}", rule="nesting")])
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list))
    return doc
