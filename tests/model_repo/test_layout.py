"""Repository layout from exported artefacts (uses a stand-in artefacts directory, no export)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_repo import layout
from model_repo.layout import LayoutError, write_repository
from model_repo.manifest import MANIFEST_FILE, read_manifest
from model_repo.spec import GenerationSpec, parse_model_config


def _artefacts(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "model.onnx").write_bytes(b"onnx graph")
    (root / "model.onnx.data").write_bytes(b"\0" * 1024)
    (root / "tokenizer.json").write_text("{}")
    (root / "generation.json").write_text("{}")
    return root


def test_layout_is_self_contained(tmp_path: Path) -> None:
    out = write_repository(tmp_path / "repo", _artefacts(tmp_path / "art"), GenerationSpec(model_name="smol"))
    version = out / "smol" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["engine", "model.py", "tritonform_runtime"]
    runtime = sorted(p.name for p in (Path(layout.__file__).parent / "runtime").glob("*.py"))
    assert sorted(p.name for p in (version / "tritonform_runtime").iterdir()) == runtime
    assert "engine.py" in runtime and "scheduler.py" in runtime
    assert sorted(p.name for p in (version / "engine").iterdir()) == [
        "generation.json",
        "model.onnx",
        "model.onnx.data",
        "tokenizer.json",
    ]
    config = parse_model_config((out / "smol" / "config.pbtxt").read_text())
    assert config.name == "smol" and config.backend == "python"
    manifest = read_manifest(out)
    assert manifest["spec"]["model_name"] == "smol" and manifest["backend"] == "onnx"
    assert manifest["files"]["smol/1/engine/model.onnx.data"]["size"] == 1024
    assert MANIFEST_FILE not in manifest["files"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_same_content_same_hash_and_replace_keeps_only_new(tmp_path: Path) -> None:
    art = _artefacts(tmp_path / "art")
    first = read_manifest(write_repository(tmp_path / "a", art, GenerationSpec()))["content_sha256"]
    again = read_manifest(write_repository(tmp_path / "b", art, GenerationSpec()))["content_sha256"]
    assert first == again
    write_repository(tmp_path / "a", art, GenerationSpec(model_name="other"))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [MANIFEST_FILE, "other"]


def test_missing_artefacts_are_named(tmp_path: Path) -> None:
    art = _artefacts(tmp_path / "art")
    (art / "tokenizer.json").unlink()
    with pytest.raises(LayoutError, match=r"lacks tokenizer.json"):
        write_repository(tmp_path / "repo", art, GenerationSpec())
    with pytest.raises(LayoutError, match="does not exist"):
        write_repository(tmp_path / "repo", tmp_path / "none", GenerationSpec())


def test_foreign_directory_is_not_replaced(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "precious.txt").write_text("keep")
    with pytest.raises(LayoutError, match="not a tritonform repository"):
        write_repository(tmp_path / "repo", _artefacts(tmp_path / "art"), GenerationSpec())
    assert (tmp_path / "repo" / "precious.txt").read_text() == "keep"


def test_failure_keeps_the_old_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    art = _artefacts(tmp_path / "art")
    out = write_repository(tmp_path / "repo", art, GenerationSpec())
    before = json.loads((out / MANIFEST_FILE).read_text())

    def broken(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(layout, "write_manifest", broken)
    with pytest.raises(OSError, match="disk full"):
        write_repository(out, art, GenerationSpec(model_name="new"))
    assert json.loads((out / MANIFEST_FILE).read_text()) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
