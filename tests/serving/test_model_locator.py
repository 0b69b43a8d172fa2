"""The model locator finds what the cluster should serve: the version CURRENT names, and its tokenizer.

Against the moto S3 emulator on loopback, with real uploads made by `model_repo.upload`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model_repo.layout import write_repository
from model_repo.spec import GenerationSpec
from model_repo.upload import upload_repository
from serving.model_locator import LocatorError, current_repository, fetch_tokenizer, main
from tests.model_repo.test_upload import s3_endpoint, small_repo  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)


def test_resolve_follows_current_across_uploads(s3_endpoint: str, small_repo: Path, tmp_path: Path) -> None:  # noqa: F811
    prefix = f"s3://{s3_endpoint}/models/locator"
    first = upload_repository(small_repo, prefix)
    assert current_repository(prefix) == first.repository_uri
    second = upload_repository(_rebuilt(small_repo, tmp_path), prefix)
    assert second.version != first.version
    out = tmp_path / "run" / "repository"
    assert main(["resolve", "--prefix", prefix, "--out", str(out)]) == 0
    assert out.read_text() == second.repository_uri


def _rebuilt(repository: Path, tmp_path: Path) -> Path:
    """The same model rebuilt with a changed tokenizer: new content, so a new version."""
    art = tmp_path / "art2"
    shutil.copytree(next(repository.glob("llm/1/engine")), art)
    (art / "tokenizer.json").write_text('{"changed": true}')
    return write_repository(tmp_path / "repo2", art, GenerationSpec())


def test_tokenizer_files_of_the_serving_version_are_copied(
    s3_endpoint: str,  # noqa: F811
    small_repo: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    prefix = f"s3://{s3_endpoint}/models/tokenizer"
    upload_repository(small_repo, prefix)
    copied = fetch_tokenizer(prefix, "llm", tmp_path / "model")
    assert sorted(p.name for p in copied) == ["generation.json", "tokenizer.json"]
    assert json.loads((tmp_path / "model" / "generation.json").read_text()) == {}


def test_nothing_uploaded_yet_is_one_clear_line(
    s3_endpoint: str,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix = f"s3://{s3_endpoint}/models/empty"
    with pytest.raises(LocatorError, match="no model has been uploaded"):
        current_repository(prefix)
    assert main(["resolve", "--prefix", prefix, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "tritonform model upload" in err and "Traceback" not in err
    assert main(["resolve", "--prefix", "http://nope", "--out", str(tmp_path / "r")]) == 2


def test_the_gateway_and_the_layout_agree_on_the_manifest_name(tmp_path: Path) -> None:
    """One manifest module for both: the gateway finds the tokenizer where the layout put it."""
    from model_repo import layout, manifest
    from serving.gateway.settings import GatewaySettings

    assert manifest.MANIFEST_FILE == layout.MANIFEST_FILE
    art = tmp_path / "art"
    art.mkdir()
    for name in ("model.onnx", "tokenizer.json", "generation.json"):
        (art / name).write_text("{}")
    repo = write_repository(tmp_path / "repo", art, GenerationSpec(engine_subdir="weights"))
    settings = GatewaySettings(model_repository=repo)
    assert settings.resolved_tokenizer_dir() == repo / "llm" / "1" / "weights"
