"""docs/hooks-reference.md from the docstrings of the plugin contract.

The contract's docstrings (:mod:`sidemesh.api.policy`, :mod:`sidemesh.datapath.messages`) are the
reference: this module only turns their reST fields (``:param x:``, ``:returns:``,
``:ivar x:``, ``#:`` attribute comments) into Markdown, so the page cannot say something
the code does not.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import types
from collections.abc import Callable
from typing import Any

from sidemesh.api import hookspecs, policy
from sidemesh.api.policy import Policy
from sidemesh.datapath import connections, messages
from sidemesh.tools.docgen_schema import GENERATED_NOTE, code

__all__ = ["parse_docstring", "render_hooks_reference", "to_markdown"]

_ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc):`(~?)([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``")
_FIELD = re.compile(r"^:(param|ivar|returns|return|raises)\s*([^:]*):\s*(.*)$")


def to_markdown(text: str) -> str:
    """reST inline markup as Markdown: roles and double-backtick literals."""

    def role(match: re.Match[str]) -> str:
        target = match.group(2)
        return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"

    return _LITERAL.sub(lambda m: f"`{m.group(1)}`", _ROLE.sub(role, text))


def parse_docstring(doc: str | None) -> tuple[str, list[tuple[str, str, str]]]:
    """Split a docstring into its prose and its fields ``(kind, name, text)``."""
    lines = inspect.cleandoc(doc or "").splitlines()
    prose: list[str] = []
    fields: list[tuple[str, str, str]] = []
    for line in lines:
        match = _FIELD.match(line)
        if match:
            kind = "returns" if match.group(1) == "return" else match.group(1)
            fields.append((kind, match.group(2).strip(), match.group(3).strip()))
        elif fields and line.startswith(" "):
            kind, name, text = fields[-1]
            fields[-1] = (kind, name, f"{text} {line.strip()}")
        elif fields and not line.strip():
            continue
        else:
            prose.append(line)
    return to_markdown("\n".join(prose).strip()), [
        (k, n, to_markdown(t)) for k, n, t in fields
    ]


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _annotation(value: Any) -> str:
    return value if isinstance(value, str) else getattr(value, "__name__", repr(value))


def _signature(function: Callable[..., Any], decorator: str = "") -> str:
    signature = inspect.signature(function)
    params = []
    for param in signature.parameters.values():
        text = param.name
        if param.annotation is not inspect.Parameter.empty:
            text += f": {_annotation(param.annotation)}"
        if param.default is not inspect.Parameter.empty:
            text += f" = {param.default!r}"
        params.append(text)
    result = ""
    if signature.return_annotation is not inspect.Signature.empty:
        result = f" -> {_annotation(signature.return_annotation)}"
    prefix = "async def " if inspect.iscoroutinefunction(function) else "def "
    head = f"{decorator}\n" if decorator else ""
    return f"{head}{prefix}{function.__name__}({', '.join(params)}){result}"


def _fields_markdown(fields: list[tuple[str, str, str]]) -> list[str]:
    lines: list[str] = []
    params = [(n, t) for k, n, t in fields if k in ("param", "ivar")]
    if params:
        lines += ["| name | meaning |", "|---|---|"]
        lines += [f"| `{n}` | {_escape(t)} |" for n, t in params]
        lines.append("")
    for kind, name, text in fields:
        if kind == "returns":
            lines += [f"**Returns** {text}", ""]
        elif kind == "raises":
            lines += [f"**Raises** `{name}`: {text}", ""]
    return lines


def _callable_section(
    level: str, name: str, function: Callable[..., Any], decorator: str = ""
) -> list[str]:
    prose, fields = parse_docstring(function.__doc__)
    return [
        f"{level} `{name}`",
        "",
        "```python",
        _signature(function, decorator),
        "```",
        "",
        *([prose, ""] if prose else []),
        *_fields_markdown(fields),
    ]


def _dataclass_section(cls: type) -> list[str]:
    prose, fields = parse_docstring(cls.__doc__)
    documented = {n: t for k, n, t in fields if k == "param"}
    lines = [f"### `{cls.__name__}`", "", prose, "", "| field | type | meaning |", "|---|---|---|"]
    for field in dataclasses.fields(cls):
        meaning = _escape(documented.get(field.name, ""))
        lines.append(f"| `{field.name}` | {code(_annotation(field.type))} | {meaning} |")
    return [*lines, ""]


def _attribute_comments(cls: type) -> dict[str, str]:
    """``#:`` comments above ``self.x = ...`` lines (and class attributes)."""
    source = inspect.getsource(cls)
    source_lines = source.splitlines()
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        for target in targets:
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
                name = target.attr
            elif isinstance(target, ast.Name):
                name = target.id
            else:
                continue
            comment: list[str] = []
            index = node.lineno - 2
            while index >= 0 and source_lines[index].strip().startswith("#:"):
                comment.insert(0, source_lines[index].strip()[2:].strip())
                index -= 1
            if comment:
                found[name] = to_markdown(" ".join(comment))
    return found


def _class_section(cls: type, methods: tuple[str, ...]) -> list[str]:
    prose, fields = parse_docstring(cls.__doc__)
    lines = [f"### `{cls.__name__}`", "", prose, ""]
    attributes = [(n, t) for k, n, t in fields if k == "ivar"]
    attributes += list(_attribute_comments(cls).items())
    if attributes:
        lines += ["| attribute | meaning |", "|---|---|"]
        lines += [f"| `{n}` | {_escape(t)} |" for n, t in attributes]
        lines.append("")
    for name in methods:
        member = inspect.getattr_static(cls, name)
        lines += _callable_section("####", f"{cls.__name__}.{name}", *_unwrap(member))
    return lines


def _unwrap(member: Any) -> tuple[Callable[..., Any], str]:
    """The function behind a class member, and the decorator to show."""
    if isinstance(member, classmethod):
        return member.__func__, "@classmethod"
    if isinstance(member, staticmethod):
        return member.__func__, "@staticmethod"
    if isinstance(member, property) and member.fget is not None:
        return member.fget, "@property"
    return member, ""


def _policy_methods() -> list[tuple[str, Callable[..., Any], str]]:
    members: list[tuple[str, Callable[..., Any], str]] = []
    for name, member in vars(Policy).items():
        function, decorator = _unwrap(member)
        if isinstance(function, types.FunctionType) and (
            not name.startswith("_") or name == "__init__"
        ):
            members.append((name, function, decorator))
    return members


def _summary(function: Callable[..., Any]) -> str:
    prose, _ = parse_docstring(function.__doc__)
    first = " ".join(prose.split(". ")[0].split())
    return _escape(first.rstrip(".") + ".")


def _lifecycle_hooks() -> list[tuple[str, Callable[..., Any]]]:
    marker = f"{hookspecs.PROJECT}_spec"
    return [
        (name, member)
        for name, member in vars(hookspecs).items()
        if isinstance(member, types.FunctionType) and hasattr(member, marker)
    ]


def render_hooks_reference() -> str:
    """The whole Markdown page."""
    overview, _ = parse_docstring(hookspecs.__doc__)
    lines = [
        "# Hooks reference",
        "",
        GENERATED_NOTE.format(
            source="the docstrings of core/sidemesh/api/ and core/sidemesh/datapath/"
        ),
        "",
        overview,
        "",
        "The walk-through is [plugin-authoring.md](plugin-authoring.md); how the hooks fit "
        "the request path is in [concepts.md](concepts.md).",
        "",
        "## `Policy`: the data-path hooks",
        "",
    ]
    prose, _ = parse_docstring(Policy.__doc__)
    lines += [prose, ""]
    comments = _attribute_comments(Policy)
    lines += ["| class attribute | meaning |", "|---|---|"]
    lines += [f"| `{n}` | {t} |" for n, t in comments.items()]
    lines.append("")
    methods = _policy_methods()
    lines += ["| method | sync/async | what |", "|---|---|---|"]
    for name, function, _ in methods:
        kind = "async" if inspect.iscoroutinefunction(function) else (
            "sync or async" if "Sync or async" in (function.__doc__ or "") else "sync"
        )
        lines.append(f"| [`{name}`](#policy{name}) | {kind} | {_summary(function)} |")
    lines.append("")
    for name, function, decorator in methods:
        lines += _callable_section("###", f"Policy.{name}", function, decorator)
    lines += ["## Lifecycle hooks (pluggy)", ""]
    lines += [
        "Implement them as module-level functions decorated with `@sidemesh.hookimpl` in the "
        "module your `sidemesh` entry point names. They are ordinary synchronous pluggy "
        "hooks: every plugin's implementation is called.",
        "",
    ]
    for name, function in _lifecycle_hooks():
        lines += _callable_section("###", name, function)
    lines += ["## What the hooks receive", ""]
    lines += _dataclass_section(policy.PolicyContext)
    lines += _dataclass_section(policy.ControlPlane)
    for name in ("fail_over", "verify"):
        member = getattr(policy.ControlPlane, name)
        lines += _callable_section("####", f"ControlPlane.{name}", member)
    lines += _dataclass_section(policy.Explanation)
    lines += _dataclass_section(connections.ConnectionSetup)
    lines += _class_section(messages.Request, ("mirror", "path_only", "protocol", "is_grpc"))
    lines += _class_section(messages.Attempt, ("status", "retry"))
    lines += _class_section(messages.Response, ("json", "text", "grpc_status"))
    lines += _class_section(connections.ConnectionInfo, ())
    lines += _class_section(
        messages.Headers, ("get", "get_all", "set", "setdefault", "add", "remove", "items")
    )
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"
