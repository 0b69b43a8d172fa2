"""Two uploads that race: CURRENT is replaced only if unchanged since it was read, so one wins and the
other says so. Real races on moto S3 and azurite, which enforce the conditions; gcp-storage-emulator
ignores `ifGenerationMatch` (checked: a write with a wrong generation succeeds there), so GCS's request
is checked against a stub of the SDK call, and its revision plumbing against the emulator."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from model_repo.layout import write_repository
from model_repo.object_stores import GcsStore, open_store
from model_repo.spec import GenerationSpec
from model_repo.storage import ConcurrentWriteError, ObjectStore, StorageUri, read_pointer
from model_repo.upload import UploadError, upload_repository
from tests.model_repo.test_upload import (  # noqa: F401 - fixtures
    AZURITE_ACCOUNT,
    WrappedStore,
    azurite_connection,
    gcs_endpoint,
    s3_endpoint,
    small_repo,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=["s3", "as"])
def destination(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh prefix on an emulator that enforces conditional writes."""
    name = f"race-{uuid.uuid4().hex[:8]}"
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_endpoint')}/models/{name}"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", request.getfixturevalue("azurite_connection"))
    return f"as://{AZURITE_ACCOUNT}/models/{name}"


class RacingStore(WrappedStore):
    """Runs `rival` (another whole upload) once, just before this upload writes CURRENT."""

    def __init__(self, inner: ObjectStore, rival: Callable[[], Any]) -> None:
        super().__init__(inner)
        self.rival: Callable[[], Any] | None = rival

    def put_bytes(self, key: str, data: bytes, *, replacing: str | None) -> None:
        if self.rival is not None:
            rival, self.rival = self.rival, None
            rival()
        self.inner.put_bytes(key, data, replacing=replacing)


def rebuilt(repository: Path, folder: Path, tokenizer: str) -> Path:
    """The same model with another tokenizer: other content, so another version."""
    art = folder / f"art-{tokenizer}"
    shutil.copytree(repository / "llm" / "1" / "engine", art)
    (art / "tokenizer.json").write_text(tokenizer)
    return write_repository(folder / f"repo-{tokenizer}", art, GenerationSpec())


@pytest.mark.parametrize("current_before", [False, True], ids=["first-upload", "replacing"])
def test_the_upload_that_loses_the_race_fails_and_the_winner_stays_current(
    destination: str,
    small_repo: Path,  # noqa: F811
    tmp_path: Path,
    current_before: bool,
) -> None:
    location = StorageUri.parse(destination)
    store = open_store(location)
    previous = upload_repository(small_repo, destination).version if current_before else None
    winners = []
    racing = RacingStore(
        store,
        lambda: winners.append(upload_repository(rebuilt(small_repo, tmp_path, '{"b": 1}'), destination)),
    )
    with pytest.raises(UploadError) as lost:
        upload_repository(rebuilt(small_repo, tmp_path, '{"a": 1}'), destination, store=racing)
    winner = winners[0]
    assert str(lost.value) == (
        f"another upload changed CURRENT to {winner.version} meanwhile; nothing serves differently; "
        "run the upload again"
    )
    pointer = read_pointer(store, location)
    assert pointer is not None and pointer["version"] == winner.version and pointer["previous"] == previous


class _StubBlob:
    def __init__(self, bucket: _StubBucket, name: str) -> None:
        self.bucket, self.name = bucket, name

    def upload_from_string(self, data: bytes, content_type: str, if_generation_match: int) -> None:
        from google.api_core.exceptions import PreconditionFailed

        self.bucket.conditions.append(if_generation_match)
        live = self.bucket.generations.get(self.name, 0)  # 0: no live object
        if if_generation_match != live:
            raise PreconditionFailed("conditionNotMet")
        self.bucket.generations[self.name] = live + 7


class _StubBucket:
    """The part of `google.cloud.storage.Bucket` that `GcsStore.put_bytes` calls, enforcing generations as
    GCS does."""

    name = "models"

    def __init__(self) -> None:
        self.generations: dict[str, int] = {}
        self.conditions: list[int] = []

    def blob(self, name: str) -> _StubBlob:
        return _StubBlob(self, name)


def test_gcs_writes_current_only_if_its_generation_is_unchanged() -> None:
    bucket = _StubBucket()
    store = GcsStore(bucket)
    store.put_bytes("p/CURRENT", b"{}", replacing=None)  # create: only if absent
    with pytest.raises(ConcurrentWriteError):
        store.put_bytes("p/CURRENT", b"{}", replacing=None)
    store.put_bytes("p/CURRENT", b"{}", replacing="7")
    with pytest.raises(ConcurrentWriteError):
        store.put_bytes("p/CURRENT", b"{}", replacing="7")  # someone else's write made it 14
    assert bucket.conditions == [0, 0, 7, 7]


def test_gcs_uploads_replace_the_generation_they_read(
    gcs_endpoint: str,  # noqa: F811
    small_repo: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "test")
    destination = f"gs://models/race-{uuid.uuid4().hex[:8]}"
    location = StorageUri.parse(destination)
    store = open_store(location)
    written: list[str | None] = []

    class Recording(WrappedStore):
        def put_bytes(self, key: str, data: bytes, *, replacing: str | None) -> None:
            written.append(replacing)
            self.inner.put_bytes(key, data, replacing=replacing)

    upload_repository(small_repo, destination, store=Recording(store))
    generation = store.bucket.get_blob(location.key("CURRENT")).generation  # type: ignore[attr-defined]
    upload_repository(rebuilt(small_repo, tmp_path, '{"c": 1}'), destination, store=Recording(store))
    assert written == [None, str(generation)]
