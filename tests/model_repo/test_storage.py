"""Storage URIs in Triton's forms (the upload, the model locator and Triton take the same strings),
version ids, and the checksums computed locally the way each cloud computes them."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from model_repo.storage import (
    POINTER,
    VERSION_PATTERN,
    ContentChecksum,
    StorageError,
    StorageUri,
    check_version_id,
    checksums_match,
    digest_file,
    new_version_id,
    version_content_prefix,
)


def test_uri_parsing_follows_triton() -> None:
    s3 = StorageUri.parse("s3://127.0.0.1:9000/bucket/a/b/")
    assert (s3.endpoint, s3.bucket, s3.prefix) == ("http://127.0.0.1:9000", "bucket", "a/b")
    assert s3.uri("versions", "v1") == "s3://127.0.0.1:9000/bucket/a/b/versions/v1"
    assert StorageUri.parse("s3://bucket").uri(POINTER) == "s3://bucket/CURRENT"
    azure = StorageUri.parse("as://acct/container/p")
    assert (azure.account, azure.bucket, azure.prefix) == ("acct", "container", "p")
    assert StorageUri.parse("gs://b/p").uri("x") == "gs://b/p/x"
    for bad in ("http://x/y", "s3://", "as://account-only"):
        with pytest.raises(StorageError):
            StorageUri.parse(bad)


def test_versions_are_checked_alike_by_storage_and_the_stack_settings() -> None:
    """infra may not import model_repo's storage code, so it keeps its own copy of the pattern."""
    from pydantic import ValidationError

    from infra.settings import serving

    assert serving._MODEL_VERSION.pattern == VERSION_PATTERN.pattern
    made = new_version_id(datetime(2026, 12, 1, 10, 15, tzinfo=UTC), "0123456789abcdef" * 4)
    samples = [made, "20261201T101500Z-0123456789ab", "20261201T101500Z-0123456789AB", "../20261201T101500Z",
               "20261201T101500Z-0123456789abc", "current", ""]  # fmt: skip
    for sample in samples:
        try:
            serving.TritonSettings(model_version=sample)
            accepted_by_infra = True
        except ValidationError:
            accepted_by_infra = False
        try:
            check_version_id(sample)
            accepted_by_storage = True
        except StorageError:
            accepted_by_storage = False
        assert accepted_by_infra == accepted_by_storage == (sample in samples[:2]), sample
    assert version_content_prefix(made) == "0123456789ab"


def test_local_checksums_are_the_ones_each_cloud_reports(tmp_path: Path) -> None:
    data = bytes(range(256)) * 100  # 25,600 bytes
    path = tmp_path / "weights"
    path.write_bytes(data)
    whole = digest_file(path, ContentChecksum("sha256", part_size=1 << 20))
    assert whole.size == len(data) and whole.sha256 == hashlib.sha256(data).hexdigest()
    assert whole.cloud_checksum == base64.b64encode(hashlib.sha256(data).digest()).decode()
    # above the part size: the SHA-256 of the parts' SHA-256s and the number of parts (S3's composite)
    parts = [hashlib.sha256(data[i : i + 10_000]).digest() for i in range(0, len(data), 10_000)]
    composite = digest_file(path, ContentChecksum("sha256", part_size=10_000)).cloud_checksum
    assert composite == base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode() + "-3"
    assert checksums_match(composite, composite) and checksums_match(composite.split("-")[0], composite)
    assert not checksums_match(None, composite) and not checksums_match(whole.cloud_checksum, composite)
    md5 = digest_file(path, ContentChecksum("md5")).cloud_checksum
    assert md5 == base64.b64encode(hashlib.md5(data).digest()).decode()
    # beyond 10,000 parts the part size doubles, as boto3's transfer manager does
    assert ContentChecksum("sha256", 5).part_size_for(100_001) == 20
    assert ContentChecksum("sha256", 5).part_size_for(4) is None
