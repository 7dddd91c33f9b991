"""Reading YAML: syntax errors with line and column, no aliases, no duplicate keys."""

from __future__ import annotations

import pytest

from sidemesh.config.source import MAX_CONFIG_BYTES
from sidemesh.config.validate import ConfigInvalid, parse_yaml


def message_of(text: str | bytes) -> str:
    with pytest.raises(ConfigInvalid) as caught:
        parse_yaml(text, "side.yaml")
    (error,) = caught.value.errors
    assert error.rule in ("yaml", "size")
    return error.message


def test_syntax_error_names_line_and_column() -> None:
    message = message_of("node:\n  service: a\nlisteners: [\n  {name: x\n")
    assert message.startswith("side.yaml:")
    line = int(message.split(":")[1])
    assert line >= 3


def test_bad_indentation_is_located() -> None:
    assert message_of("node:\n  service: a\n bad: 1\n").startswith("side.yaml:3:")


def test_aliases_and_anchors_are_refused() -> None:
    bomb = "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nc: [*b, *b, *b]\n"
    assert "anchors and aliases" in message_of(bomb)
    assert "side.yaml:1:" in message_of(bomb)


def test_duplicate_keys_are_refused() -> None:
    assert "duplicate key 'node'" in message_of("node: {service: a}\nnode: {service: b}\n")


def test_non_string_keys_are_refused() -> None:
    assert "keys must be strings" in message_of("node: {1: a}\n")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- a\n- b\n", "just text\n", "42"])
def test_document_must_be_a_mapping(text: str) -> None:
    assert "side.yaml" in message_of(text)


def test_several_documents_are_refused() -> None:
    assert "more than one YAML document" in message_of("a: 1\n---\nb: 2\n")


def test_size_is_capped_and_bytes_must_be_utf8() -> None:
    assert "more than" in message_of(b"a: " + b"x" * MAX_CONFIG_BYTES)
    assert "not UTF-8" in message_of(b"a: \xff\xfe\n")


def test_dates_stay_strings_and_python_tags_are_refused() -> None:
    assert parse_yaml("a: 2026-01-01\n") == {"a": "2026-01-01"}
    assert "side.yaml" in message_of("a: !!python/object/apply:os.system ['true']\n")
