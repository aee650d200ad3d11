"""The one table: --help, docs/settings.md and the Settings class all follow it."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path

from tgi_core import settings_docs
from tgi_core.settings import FIELDS, SECTIONS, HostInfo, Settings, render_help

DOCS = Path(__file__).resolve().parents[3] / "docs" / "settings.md"


def test_committed_docs_equal_the_generated_text() -> None:
    assert DOCS.read_text(encoding="utf-8") == settings_docs.render_markdown(), (
        "docs/settings.md is stale: run python -m tgi_core.settings_docs docs/settings.md"
    )


def test_docs_main_writes_the_file(tmp_path: Path) -> None:
    target = tmp_path / "settings.md"
    assert settings_docs.main([str(target)]) == 0
    assert target.read_text(encoding="utf-8") == settings_docs.render_markdown()


def test_help_and_docs_list_every_setting() -> None:
    help_text = render_help()
    docs = settings_docs.render_markdown()
    for spec in FIELDS:
        assert spec.display in help_text, spec.name
        assert f"`{spec.display}`" in docs or f"`{spec.env_names[0]}`" in docs, spec.name
        for env in spec.env_names:
            assert env in help_text and f"`{env}`" in docs, env
        if spec.short is not None:
            assert f"-{spec.short}, {spec.long}" in help_text
    for section in SECTIONS:
        assert f"\n{section}:\n" in help_text and f"\n## {section}\n" in docs


def test_flags_and_variables_are_named_as_clap_names_them() -> None:
    longs = [spec.long for spec in FIELDS if spec.long is not None]
    shorts = [spec.short for spec in FIELDS if spec.short is not None]
    envs = [env for spec in FIELDS for env in spec.env_names]
    assert len(set(longs)) == len(longs)
    assert len(set(shorts)) == len(shorts) and not {"h", "V"} & set(shorts)
    assert len(set(envs)) == len(envs)
    for spec in FIELDS:
        assert spec.section in SECTIONS
        if spec.long is not None:
            assert spec.long == "--" + spec.name.replace("_", "-")
            if spec.env_names:
                assert spec.env_names[0] == spec.name.upper()


def test_settings_class_holds_exactly_the_stored_settings_of_the_table() -> None:
    stored = [spec.name for spec in FIELDS if spec.stored]
    assert sorted(field.name for field in dataclasses.fields(Settings)) == sorted(stored)
    secret = {spec.name for spec in FIELDS if spec.secret}
    assert {field.name for field in dataclasses.fields(Settings) if not field.repr} == secret


def _conforms(value: object, annotation: object) -> bool:
    """isinstance for the annotations Settings uses (unions, Literal, tuple[T, ...])."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if origin is tuple:
        return isinstance(value, tuple) and all(_conforms(item, args[0]) for item in value)
    if annotation is type(None):
        return value is None
    # bool is an int to isinstance, but never a valid int or float setting here.
    exact = annotation in (int, float)
    assert isinstance(annotation, type)
    return isinstance(value, annotation) and not (exact and isinstance(value, bool))


def test_parsed_values_have_the_declared_types() -> None:
    hints = typing.get_type_hints(Settings)
    plain = HostInfo(habana_available=False, embedded_model=None)
    defaults_as_environ = {
        spec.env_names[0]: spec.kind.format(spec.default)
        for spec in FIELDS
        if spec.default not in (None, ()) and spec.env_names
    }
    argv = ["--dtype", "float16", "--rope-factor", "2", "--sharded", "true", "--num-shard", "2"]
    examples = [
        Settings.from_sources([], {}, host=plain),
        Settings.from_sources(argv, defaults_as_environ, host=plain),
    ]
    for settings in examples:
        for name, annotation in hints.items():
            assert _conforms(getattr(settings, name), annotation), name
