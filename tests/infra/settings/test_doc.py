"""The README's settings table is generated from the settings model and must stay in step with it."""

from __future__ import annotations

from pathlib import Path

from infra.settings.doc import markdown_table, rows

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_holds_the_current_settings_table() -> None:
    assert markdown_table() in README.read_text(), (
        "README.md's settings table is stale: run `python -m infra.settings.doc --write README.md`"
    )


def test_every_setting_is_documented() -> None:
    undocumented = [key for key, _type, _default, meaning in rows() if not meaning]
    assert undocumented == []


def test_table_shows_required_keys_and_defaults() -> None:
    table = {key: default for key, _t, default, _m in rows()}
    assert table["region"] == "**required**"
    assert table["gpuPool.capacity"] == "`on-demand`"
    assert table["network.zoneCount"] == "`2`"
