"""Config errors as users read them: a path into the YAML, a message, the plugin, the rule.

JSON Schema errors are translated here so every consumer (``sidemesh validate``, the
control plane's ``422`` answers, a proxy's NACK) shows the same words.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from jsonschema.exceptions import ValidationError

from sidemesh.api.durations import DURATION_PATTERN

__all__ = [
    "ConfigError",
    "ConfigInvalid",
    "did_you_mean",
    "format_path",
    "schema_error",
    "snake_case",
]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Where camelCase starts a word: before an upper-case letter that follows a lower-case
# letter or a digit (perTryTimeout), or that starts a word after an acronym (HTTPRetry).
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")

# Patterns of the core schema, named so an error says what was expected rather than
# quoting a regex at the user.
_PATTERN_MEANING = {
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):[0-9]{1,5}$": (
        "a host:port address, e.g. 127.0.0.1:15001 or [::1]:8080"
    ),
    r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,62}[A-Za-z0-9])?$": (
        "a name: letters, digits, '-', '_' or '.', at most 64, starting and ending "
        "with a letter or digit"
    ),
    r"^(\*|\*[A-Za-z0-9_.:\[\]-]+|[A-Za-z0-9_.:\[\]-]+\*?)$": (
        "a host name, optionally with a port, and at most one '*' at its start or end"
    ),
    "^/": "a path starting with '/'",
    r"^[A-Z]+$": "an upper-case HTTP method such as GET",
    r"^https?://[^\s/,]+(/[^\s,]*)?$": "an http:// or https:// URL",
    r"^https?://[^\s/,]+(/[^\s,]*)?(\s*,\s*https?://[^\s/,]+(/[^\s,]*)?)*$": (
        "an http:// or https:// URL, or several separated by single commas"
    ),
}
_JSON_TYPES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "null",
}


@dataclass(frozen=True)
class ConfigError:
    """One problem in a config.

    :param path: where, e.g. ``listeners[0].routes[0].plugins[0].config.attempts``
        (empty for the document itself).
    :param message: what is wrong, in words.
    :param plugin: the plugin whose schema or check found it, if any.
    :param plugin_version: that plugin's installed version.
    :param rule: the JSON Schema keyword (``maximum``) or semantic rule
        (``cluster_ref``) that was broken.
    """

    path: str
    message: str
    plugin: str | None = None
    plugin_version: str | None = None
    rule: str | None = None

    def __str__(self) -> str:
        where = self.path or "(document)"
        notes = []
        if self.plugin is not None:
            notes.append(
                f"plugin {self.plugin}@{self.plugin_version}"
                if self.plugin_version
                else f"plugin {self.plugin}"
            )
        if self.rule is not None:
            notes.append(f"rule {self.rule}")
        suffix = f" [{', '.join(notes)}]" if notes else ""
        return f"{where}: {self.message}{suffix}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ConfigInvalid(Exception):
    """A config was rejected; :attr:`errors` lists every problem found."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors = list(errors)
        lines = [str(e) for e in self.errors]
        count = len(lines)
        head = f"invalid config ({count} error{'s' if count != 1 else ''})"
        super().__init__("\n  ".join([head + ":", *lines]) if lines else head)


def format_path(parts: Iterable[str | int]) -> str:
    """``("listeners", 0, "name")`` -> ``listeners[0].name``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENTIFIER.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def snake_case(key: str) -> str:
    """``perTryTimeout`` -> ``per_try_timeout``, ``max-retries`` -> ``max_retries``:
    the spelling of a key as Istio's YAML (camelCase) or a flag (kebab) has it, in ours."""
    return _CAMEL_BOUNDARY.sub("_", key).replace("-", "_").lower()


def did_you_mean(key: str, allowed: Sequence[str]) -> str:
    """``"; did you mean 'per_try_timeout'?"`` for an unknown ``key``: its snake_case
    form when that is allowed, else the closest allowed key (``difflib``), else ``""``."""
    snake = snake_case(key)
    if snake != key and snake in allowed:
        return f"; did you mean {snake!r}?"
    # 0.75 rather than difflib's 0.6: "per_try_timeout" is not a typo of "timeout".
    close = difflib.get_close_matches(snake, allowed, n=1, cutoff=0.75)
    return f"; did you mean {close[0]!r}?" if close else ""


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def schema_error(
    error: ValidationError,
    prefix: Sequence[str | int] = (),
    plugin: str | None = None,
    plugin_version: str | None = None,
) -> list[ConfigError]:
    """Translate one jsonschema error (rooted at ``prefix`` in the document)."""
    parts = [*prefix, *error.absolute_path]
    keyword = str(error.validator)
    value: Any = error.validator_value
    instance: Any = error.instance
    sub: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
    props: dict[str, Any] = sub.get("properties", {})
    rule: str = keyword
    message = error.message

    if keyword == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(props)
        extras = [k for k in instance if k not in props]
        listing = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return [
            ConfigError(format_path([*parts, key]),
                        f"unknown key {key!r}{listing}{did_you_mean(str(key), allowed)}",
                        plugin, plugin_version, "additionalProperties")
            for key in extras
        ] or [ConfigError(format_path(parts), message, plugin, plugin_version, keyword)]
    if keyword == "required":
        missing = re.match(r"^'(.*)' is a required property$", message)
        key = missing.group(1) if missing else "?"
        message = f"missing required key {key!r}"
    elif keyword == "type":
        expected = value if isinstance(value, list) else [value]
        names = " or ".join(
            {"object": "an object", "array": "a list", "integer": "an integer",
             "null": "null"}.get(t, f"a {t}") for t in expected
        )
        message = f"expected {names}, got {_kind(instance)} {_short(instance)}"
        if sub.get("pattern") == DURATION_PATTERN and type(instance) in (int, float):
            # YAML reads `timeout: 5` as a number: a duration needs its unit.
            message += f"; write a duration with its unit, e.g. '{instance}s'"
    elif keyword == "enum":
        choices = ", ".join(str(v) for v in value)
        message = f"{_short(instance)} is not one of: {choices}"
    elif keyword == "pattern" and value == DURATION_PATTERN:
        # The checks' validator asked parse_duration, whose message says what is wrong
        # (not a duration, or longer than Go allows).
        rule = "duration"
    elif keyword == "pattern":
        meaning = _PATTERN_MEANING.get(str(value))
        if meaning is not None:
            message = f"{_short(instance)} is not {meaning}"
    elif keyword == "dependentSchemas" or (
        keyword == "not" and "dependentSchemas" in error.schema_path
    ):
        message = "use at most one of prefix, path, regex"
        rule = "dependentSchemas"
    elif keyword in ("minProperties", "maxProperties") and set(props) == {
        "exact", "prefix", "regex", "present"
    }:
        message = "give exactly one of exact, prefix, regex, present"
    elif keyword == "minItems" and value == 1 and instance == []:
        message = "must not be empty"
    return [ConfigError(format_path(parts), message, plugin, plugin_version, rule)]
