"""The generated references match the schemas and hook docstrings (this is the CI check
that they cannot drift), they cover everything, and docs links point somewhere."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from sidemesh.api.policy import Policy
from sidemesh.config.registry import DATA_PATH_HOOKS, core_schema
from sidemesh.tools import docgen
from sidemesh.tools.docgen_hooks import parse_docstring
from sidemesh.tools.docgen_schema import rows

ROOT = Path(__file__).resolve().parents[1]


def test_generated_references_are_up_to_date(capfd: pytest.CaptureFixture[str]) -> None:
    status = docgen.main(["--check"])
    assert status == 0, (
        "docs/config-reference.md or docs/hooks-reference.md is stale; run "
        f"`python -m sidemesh.tools.docgen`:\n{capfd.readouterr().err}"
    )


def test_every_core_and_plugin_key_is_in_the_config_reference() -> None:
    page = (ROOT / "docs" / "config-reference.md").read_text()
    for row in rows(core_schema()):
        assert f"| `{row.path}` |" in page, row.path
    for plugin in docgen.repo_plugins(ROOT):
        assert f"## Plugin `{plugin.name}`" in page
        for row in rows(plugin.schema):
            assert f"| `{row.path}` |" in page, (plugin.name, row.path)


def test_rows_carry_type_default_bounds_and_description() -> None:
    schema = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "pattern": "^a|b$", "description": "The name."},
            "tries": {"type": "integer", "minimum": 0, "maximum": 10, "default": 2,
                      "description": "Tries."},
            "limits": {"$ref": "#/$defs/limits"},
        },
        "$defs": {"limits": {"type": "object", "default": {}, "description": "Limits.",
                             "properties": {"codes": {"type": "array", "default": [503],
                                                      "items": {"type": "integer",
                                                                "minimum": 100}}}}},
    }  # fmt: skip
    found = {row.path: row for row in rows(schema)}
    assert list(found) == ["name", "tries", "limits", "limits.codes"]
    assert found["name"].default == "**required**"
    assert found["name"].bounds == "pattern `^a\\|b$`"
    assert (found["tries"].default, found["tries"].bounds) == ("`2`", "≥ 0; ≤ 10")
    assert found["limits"].description == "Limits."
    assert found["limits.codes"].type == "array of integer"
    assert found["limits.codes"].bounds == "each: ≥ 100"


def test_the_hooks_reference_documents_every_hook_and_field() -> None:
    page = (ROOT / "docs" / "hooks-reference.md").read_text()
    for hook in DATA_PATH_HOOKS:
        assert f"### `Policy.{hook}`" in page
        _, fields = parse_docstring(getattr(Policy, hook).__doc__)
        for kind, name, _text in fields:
            if kind == "param":
                assert f"| `{name}` |" in page, (hook, name)
    for name in ("sidemesh_policies", "sidemesh_config_applied", "PolicyContext",
                 "ConnectionSetup", "Request", "Attempt"):
        assert f"### `{name}`" in page, name
    for field in ("shared", "scope", "ssl_context", "verify_peer", "tls_optional"):
        assert f"| `{field}` |" in page, field


def test_parse_docstring_turns_rest_into_markdown() -> None:
    prose, fields = parse_docstring(
        """Do it with :class:`~sidemesh.datapath.messages.Response` and ``x=1``.

        :param request: the request,
            over two lines.
        :returns: ``None``.
        """
    )
    assert prose == "Do it with `Response` and `x=1`."
    assert fields == [("param", "request", "the request, over two lines."),
                      ("returns", "", "`None`.")]


def test_check_fails_on_a_stale_or_missing_file_and_passes_once_written(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "plugins").mkdir()
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert docgen.main(["--check", "--root", str(tmp_path)]) == 1
    assert "stale" in capfd.readouterr().err
    assert docgen.main(["--root", str(tmp_path)]) == 0
    assert docgen.main(["--check", "--root", str(tmp_path)]) == 0
    hooks = tmp_path / "docs" / "hooks-reference.md"
    hooks.write_text(hooks.read_text().replace("Completion hook", "Finish hook"))
    assert docgen.main(["--check", "--root", str(tmp_path)]) == 1
    err = capfd.readouterr().err
    assert "-Finish hook" in err.replace(" ", "") or "Finish hook" in err
    assert "hooks-reference.md" in err


def test_a_plugin_that_is_not_installed_is_read_from_its_source_tree(tmp_path: Path) -> None:
    plugin = tmp_path / "plugins" / "ghost"
    (plugin / "sidemesh_ghost").mkdir(parents=True)
    (plugin / "pyproject.toml").write_text(
        '[project]\nname = "sidemesh-ghost"\nversion = "1.2.3"\n'
        '[project.entry-points.sidemesh]\nghost = "sidemesh_ghost.plugin"\n'
    )
    (plugin / "sidemesh_ghost" / "schema.json").write_text(json.dumps({
        "type": "object", "additionalProperties": False,
        "properties": {"boo": {"type": "boolean", "default": True, "description": "Boo."}},
    }))  # fmt: skip
    [found] = docgen.repo_plugins(tmp_path)
    assert (found.name, found.distribution, found.version) == ("ghost", "sidemesh-ghost", "1.2.3")
    assert [r.path for r in rows(found.schema)] == ["boo"]


def test_links_between_docs_point_to_existing_files() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        text = re.sub(r"``.*?``|`[^`]*`", "", text)
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
