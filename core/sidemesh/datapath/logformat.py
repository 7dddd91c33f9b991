"""Envoy's access-log formats, compiled once per config: ``access_log.format`` (a format
string of text and command operators) and ``access_log.json_format`` (a JSON object
whose values are such strings).

Compiling parses the text once into literal pieces and field functions
(:mod:`logfields`); a request's line is then a call per operator and a join. The
grammar is Envoy's: ``%NAME%``, ``%NAME(argument)%``, ``%NAME(argument):N%`` (at most N
characters); every other ``%`` is an error, as in Envoy.
"""

from __future__ import annotations

import difflib
import json
import re
from typing import Any, Final

from sidemesh.datapath.accesslog import SIDEMESH_JSON, LineFormat
from sidemesh.datapath.logfields import (
    GRPC_STATUS_FORMS,
    OPERATORS,
    Field,
    Value,
    environment,
    grpc_status_field,
    header_field,
    start_time,
)
from sidemesh.datapath.messages import Request
from sidemesh.datapath.model import AccessLogConfig
from sidemesh.datapath.outcome import Outcome

__all__ = ["FormatError", "compile_format", "compile_log_format"]

_COMMAND: Final = re.compile(r"%([A-Z0-9_]+)(?:\(([^)]*)\))?(?::([0-9]+))?%")
_HEADER: Final = re.compile(r"^:?[A-Za-z0-9!#$&'*+.^_`|~-]+$")
_HEADER_OPERATORS: Final = ("REQ", "RESP", "TRAILER")
_LOCAL: Final = frozenset(
    {"DOWNSTREAM_LOCAL_ADDRESS", "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_LOCAL_PORT"}
)
_KNOWN: Final = sorted({*OPERATORS, *_HEADER_OPERATORS, "ENVIRONMENT", "GRPC_STATUS"})


class FormatError(ValueError):
    """A format that does not compile; ``where`` is the key path inside a JSON format."""

    def __init__(self, message: str, where: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.where = where


# parsing --------------------------------------------------------------------------------
def _truncated(field: Field, limit: int) -> Field:
    def short(request: Request, outcome: Outcome) -> Value:
        value = field(request, outcome)
        return value[:limit] if isinstance(value, str) else value

    return short


def _header(name: str, argument: str | None) -> Field:
    names = (argument or "").split("?")
    if len(names) > 2:
        raise FormatError(f"%{name}({argument})%: only one alternative header (X?Y)")
    for header in names:
        if not _HEADER.match(header):
            raise FormatError(f"%{name}({argument or ''})%: {header!r} is not a header name")
    return header_field(name, names[0], names[1] if len(names) == 2 else None)


def _operator(name: str, argument: str | None, limit: str | None, used: set[str]) -> Field:
    used.add(name)
    if name in _HEADER_OPERATORS:
        field = _header(name, argument)
    elif name == "START_TIME" and argument:
        field = start_time(argument)
    elif name == "GRPC_STATUS":
        form = argument or "CAMEL_STRING"
        if form not in GRPC_STATUS_FORMS:
            raise FormatError(f"%GRPC_STATUS({argument})%: the form is one of "
                              f"{', '.join(GRPC_STATUS_FORMS)}")
        field = grpc_status_field(form)
    elif name == "ENVIRONMENT":
        if not argument:
            raise FormatError("%ENVIRONMENT(X)% needs the variable's name")
        field = environment(argument)
    elif name in OPERATORS:
        if argument is not None and name != "START_TIME":
            raise FormatError(f"%{name}% takes no argument, got ({argument})")
        field = OPERATORS[name]
    else:
        close = difflib.get_close_matches(name, _KNOWN, n=1)
        hint = f" (did you mean %{close[0]}%?)" if close else ""
        raise FormatError(
            f"unknown command operator %{name}%{hint}; docs/operations.md lists the "
            "operators sidemesh supports"
        )
    return _truncated(field, int(limit)) if limit is not None else field


def _parse(text: str, used: set[str]) -> list[str | Field]:
    """``text`` as literal strings and fields, in order (no two literals in a row)."""
    pieces: list[str | Field] = []
    position = 0
    while True:
        percent = text.find("%", position)
        literal = text[position:] if percent < 0 else text[position:percent]
        if literal:
            pieces.append(literal)
        if percent < 0:
            return pieces
        match = _COMMAND.match(text, percent)
        if match is None:
            raise FormatError(
                f"no command operator at position {percent} ({text[percent:percent + 24]!r}): "
                "a % starts %NAME%, %NAME(argument)% or %NAME(argument):N%"
            )
        pieces.append(_operator(match.group(1), match.group(2), match.group(3), used))
        position = match.end()


# rendering ------------------------------------------------------------------------------
class _Node:
    def value(self, request: Request, outcome: Outcome) -> Any:
        raise NotImplementedError


class _Constant(_Node):
    def __init__(self, text: str) -> None:
        self.text = text

    def value(self, request: Request, outcome: Outcome) -> Any:
        return self.text


class _Typed(_Node):
    """A value that is one operator: a number stays a number, unset is ``null``."""

    def __init__(self, field: Field) -> None:
        self.field = field

    def value(self, request: Request, outcome: Outcome) -> Any:
        return self.field(request, outcome)


class _Text(_Node):
    """Literals and operators joined into one string, ``-`` for what is not set."""

    def __init__(self, pieces: list[str | Field]) -> None:
        first = pieces[0] if pieces and isinstance(pieces[0], str) else ""
        self.head = first
        self.parts: list[tuple[Field, str]] = []
        for piece in pieces[1:] if first else pieces:
            if isinstance(piece, str):
                field, _ = self.parts[-1]
                self.parts[-1] = (field, piece)
            else:
                self.parts.append((piece, ""))

    def render(self, request: Request, outcome: Outcome) -> str:
        out = [self.head]
        for field, literal in self.parts:
            value = field(request, outcome)
            out.append("-" if value is None else value if isinstance(value, str) else str(value))
            out.append(literal)
        return "".join(out)

    def value(self, request: Request, outcome: Outcome) -> Any:
        return self.render(request, outcome)


class _Object(_Node):
    def __init__(self, items: list[tuple[str, _Node]]) -> None:
        self.items = items

    def value(self, request: Request, outcome: Outcome) -> Any:
        return {key: node.value(request, outcome) for key, node in self.items}


class _List(_Node):
    def __init__(self, nodes: list[_Node]) -> None:
        self.nodes = nodes

    def value(self, request: Request, outcome: Outcome) -> Any:
        return [node.value(request, outcome) for node in self.nodes]


def _json_node(spec: Any, where: tuple[str, ...], used: set[str]) -> _Node:
    try:
        if isinstance(spec, str):
            pieces = _parse(spec, used)
            if len(pieces) == 1 and not isinstance(pieces[0], str):
                return _Typed(pieces[0])
            return _Text(pieces) if any(not isinstance(p, str) for p in pieces) \
                else _Constant(spec)
    except FormatError as exc:
        raise FormatError(str(exc), where) from None
    if isinstance(spec, dict):
        # Envoy's JSON lines list keys in sorted order (a protobuf Struct's).
        return _Object([(str(k), _json_node(v, (*where, str(k)), used))
                        for k, v in sorted(spec.items())])
    if isinstance(spec, list):
        return _List([_json_node(v, (*where, str(i)), used) for i, v in enumerate(spec)])
    raise FormatError("a value is a string of operators, a mapping or a list", where)


class TextFormat(LineFormat):
    """An Envoy format string; no newline is added (end the format with ``\\n``)."""

    def __init__(self, text: _Text, local_address: bool) -> None:
        super().__init__(local_address)
        self.text = text

    def line(self, request: Request, outcome: Outcome) -> str:
        return self.text.render(request, outcome)


class JsonFormat(LineFormat):
    """An Envoy ``json_format``: one compact JSON object per line."""

    def __init__(self, root: _Node, local_address: bool) -> None:
        super().__init__(local_address)
        self.root = root

    def line(self, request: Request, outcome: Outcome) -> str:
        return json.dumps(self.root.value(request, outcome), separators=(",", ":")) + "\n"


def compile_format(text: str) -> TextFormat:
    """Compile an Envoy format string.

    :raises FormatError: naming the operator or position that is wrong.
    """
    used: set[str] = set()
    return TextFormat(_Text(_parse(text, used)), bool(used & _LOCAL))


def compile_log_format(config: AccessLogConfig) -> LineFormat:
    """The line format ``config`` asks for: sidemesh's JSON when it names none.

    :raises FormatError: for a format that does not compile.
    """
    if config.format is not None:
        return compile_format(config.format)
    if config.json_format is not None:
        used: set[str] = set()
        root = _json_node(config.json_format, (), used)
        return JsonFormat(root, bool(used & _LOCAL))
    return SIDEMESH_JSON
