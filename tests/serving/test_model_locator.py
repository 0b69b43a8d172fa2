"""The model locator serves exactly the version it is given, checked against its manifest, and its tokenizer.

Against the moto S3 emulator on loopback, with real uploads made by `model_repo.upload`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model_repo.layout import write_repository
from model_repo.object_stores import S3Store, open_store
from model_repo.spec import GenerationSpec
from model_repo.storage import StorageUri, read_pointer_revision
from model_repo.upload import UploadResult, upload_repository
from serving.model_locator import LocatorError, current_repository, fetch_tokenizer, main, version_repository
from tests.docker.test_images import GATEWAY_DOCKERFILE, copy_image_files
from tests.model_repo.test_upload import DUMMY_AWS, s3_endpoint, small_repo  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)


def test_resolve_follows_current_across_uploads(s3_endpoint: str, small_repo: Path, tmp_path: Path) -> None:  # noqa: F811
    prefix = f"s3://{s3_endpoint}/models/locator"
    first = upload_repository(small_repo, prefix)
    assert current_repository(prefix) == first.repository_uri
    second = upload_repository(_rebuilt(small_repo, tmp_path), prefix)
    assert second.version != first.version
    out = tmp_path / "run" / "repository"
    assert main(["resolve", "--prefix", prefix, "--version", "current", "--out", str(out)]) == 0
    assert out.read_text() == second.repository_uri


def test_resolve_serves_exactly_the_version_it_is_given(
    s3_endpoint: str,  # noqa: F811
    small_repo: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    prefix = f"s3://{s3_endpoint}/models/pinned"
    first = upload_repository(small_repo, prefix)
    upload_repository(_rebuilt(small_repo, tmp_path), prefix)  # a newer upload does not move a pinned pod
    out = tmp_path / "repository"
    assert main(["resolve", "--prefix", prefix, "--version", first.version, "--out", str(out)]) == 0
    assert out.read_text() == first.repository_uri == version_repository(prefix, first.version)


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
    result = upload_repository(small_repo, prefix)
    copied = fetch_tokenizer(prefix, "llm", tmp_path / "model", version=result.version)
    assert sorted(p.name for p in copied) == ["generation.json", "tokenizer.json"]
    assert json.loads((tmp_path / "model" / "generation.json").read_text()) == {}
    dest = tmp_path / "cli"
    assert main(["tokenizer", "--prefix", prefix, "--version", result.version, "--dest", str(dest)]) == 0
    assert (dest / "tokenizer.json").read_bytes() == (small_repo / "llm/1/engine/tokenizer.json").read_bytes()


def test_nothing_uploaded_yet_is_one_clear_line(
    s3_endpoint: str,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix = f"s3://{s3_endpoint}/models/empty"
    with pytest.raises(LocatorError, match="no model has been uploaded"):
        current_repository(prefix)
    assert main(["resolve", "--prefix", prefix, "--version", "current", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "tritonform model upload" in err and "Traceback" not in err
    assert (
        main(["resolve", "--prefix", "http://nope", "--version", "current", "--out", str(tmp_path / "r")])
        == 2
    )


def _uploaded(endpoint: str, repository: Path, name: str) -> tuple[str, UploadResult, S3Store]:
    prefix = f"s3://{endpoint}/models/{name}"
    store = open_store(StorageUri.parse(prefix))
    assert isinstance(store, S3Store)
    return prefix, upload_repository(repository, prefix), store


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one line the locator printed when it refused (exit status 2)."""
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("model locator: "), lines
    return lines[0]


def test_a_version_that_is_malformed_missing_or_incomplete_is_refused(
    s3_endpoint: str,  # noqa: F811
    small_repo: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix, result, store = _uploaded(s3_endpoint, small_repo, "refused")
    out = ["--out", str(tmp_path / "r")]
    assert "is not a model version" in _refused(
        ["resolve", "--prefix", prefix, "--version", "../x", *out], capsys
    )
    absent = "20990101T000000Z-0123456789ab"
    line = _refused(["resolve", "--prefix", prefix, "--version", absent, *out], capsys)
    assert f"version {absent} is not in {prefix}" in line
    store.client.delete_object(Bucket="models", Key=f"refused/versions/{result.version}/llm/config.pbtxt")
    line = _refused(["resolve", "--prefix", prefix, "--version", result.version, *out], capsys)
    assert "is incomplete" in line and "llm/config.pbtxt" in line
    assert not (tmp_path / "r").exists()


def test_a_manifest_that_does_not_match_its_version_is_refused(
    s3_endpoint: str,  # noqa: F811
    small_repo: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix, result, store = _uploaded(s3_endpoint, small_repo, "mismatch")
    manifest = store.get_bytes(f"mismatch/versions/{result.version}/REPOSITORY.json")
    assert manifest is not None
    # the version's manifest copied under another version id: its hash is not that id's
    other = re.sub(r"-[0-9a-f]{12}$", "-ffffffffffff", result.version)
    store.client.put_object(Bucket="models", Key=f"mismatch/versions/{other}/REPOSITORY.json", Body=manifest)
    for command in (["resolve", "--out", str(tmp_path / "r")], ["tokenizer", "--dest", str(tmp_path / "t")]):
        line = _refused([*command, "--prefix", prefix, "--version", other], capsys)
        assert f"does not belong to version {other}" in line
    # a manifest whose file list was edited no longer hashes to its content_sha256
    edited = json.loads(manifest)
    edited["files"]["llm/1/engine/tokenizer.json"]["sha256"] = "0" * 64
    key = f"mismatch/versions/{result.version}/REPOSITORY.json"
    store.client.put_object(Bucket="models", Key=key, Body=json.dumps(edited).encode())
    line = _refused(
        ["tokenizer", "--prefix", prefix, "--version", result.version, "--dest", str(tmp_path / "t")], capsys
    )
    assert f"does not belong to version {result.version}" in line
    assert not (tmp_path / "r").exists() and not (tmp_path / "t").exists()


def test_a_tokenizer_file_that_differs_from_the_manifest_is_refused(
    s3_endpoint: str,  # noqa: F811
    small_repo: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix, result, store = _uploaded(s3_endpoint, small_repo, "tampered")
    key = f"tampered/versions/{result.version}/llm/1/engine/tokenizer.json"
    store.client.put_object(Bucket="models", Key=key, Body=b"[]")  # same size, other content
    line = _refused(
        ["tokenizer", "--prefix", prefix, "--version", result.version, "--dest", str(tmp_path / "t")], capsys
    )
    assert "tokenizer.json differs from its manifest" in line
    assert not (tmp_path / "t" / "tokenizer.json").exists()


def test_current_is_refused_when_it_points_outside_versions_or_at_other_content(
    s3_endpoint: str,  # noqa: F811
    small_repo: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prefix, result, store = _uploaded(s3_endpoint, small_repo, "pointer")
    location = StorageUri.parse(prefix)
    out = ["--out", str(tmp_path / "r")]
    for change in (
        {"repository": f"s3://{s3_endpoint}/models/elsewhere"},
        {"version": "../../elsewhere"},
        {"content_sha256": "f" * 64},
    ):
        pointer, revision = read_pointer_revision(store, location)
        assert pointer is not None
        original = dict(pointer)
        store.put_bytes("pointer/CURRENT", json.dumps({**pointer, **change}).encode(), replacing=revision)
        line = _refused(["resolve", "--prefix", prefix, "--version", "current", *out], capsys)
        assert "refusing" in line or "is not a model version" in line
        _, revision = read_pointer_revision(store, location)
        store.put_bytes("pointer/CURRENT", json.dumps(original).encode(), replacing=revision)
    assert main(["resolve", "--prefix", prefix, "--version", "current", *out]) == 0
    assert (tmp_path / "r").read_text() == result.repository_uri


def test_the_locator_runs_from_the_gateway_images_files_alone(
    s3_endpoint: str,  # noqa: F811
    small_repo: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Only what docker/gateway/Dockerfile copies into /app, imported from there: every module the
    locator loads must be one the image holds."""
    app = copy_image_files(GATEWAY_DOCKERFILE, tmp_path / "app")
    prefix = f"s3://{s3_endpoint}/models/image"
    result = upload_repository(small_repo, prefix)
    script = (
        "import sys\n"
        "from serving.model_locator import main\n"
        f"code = main(['resolve', '--prefix', {prefix!r}, '--version', {result.version!r}, '--out', 'uri'])\n"
        "ours = [m.__file__ for n, m in list(sys.modules.items())\n"
        "        if n.split('.')[0] in ('serving', 'model_repo')]\n"
        f"assert all(f and f.startswith({str(app)!r}) for f in ours), ours\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, **DUMMY_AWS}
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-c", script], cwd=app, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (app / "uri").read_text() == result.repository_uri


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


def test_sync_copies_the_whole_version_to_local_storage_checked(
    s3_endpoint: str,  # noqa: F811
    small_repo: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """`sync` (Triton's pod for the TensorRT-LLM backend) copies every file of the version it is given to
    node-local storage, checked against the manifest, and writes the folder for --model-repository; a
    file that differs from its manifest is refused and nothing is left as the version's folder."""
    from serving.model_locator import sync_version

    prefix, result, store = _uploaded(s3_endpoint, small_repo, "sync")
    out = tmp_path / "run" / "repository"
    dest = tmp_path / "models"
    command = [
        "sync",
        "--prefix",
        prefix,
        "--version",
        result.version,
        "--dest",
        str(dest),
        "--out",
        str(out),
    ]
    assert main(command) == 0
    folder = Path(out.read_text())
    assert folder == dest / result.version
    local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert local == sorted(p.relative_to(small_repo).as_posix() for p in small_repo.rglob("*") if p.is_file())
    assert (folder / "llm/1/engine/tokenizer.json").read_bytes() == (
        small_repo / "llm/1/engine/tokenizer.json"
    ).read_bytes()
    key = f"sync/versions/{result.version}/llm/1/engine/tokenizer.json"
    store.client.put_object(Bucket="models", Key=key, Body=b"[]")
    shutil.rmtree(dest)
    with pytest.raises(LocatorError, match="differs from its manifest"):
        sync_version(prefix, result.version, dest)
    assert not (dest / result.version).exists()
