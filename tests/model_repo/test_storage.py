"""Storage URIs in Triton's forms (the upload, the model locator and Triton take the same strings)."""

from __future__ import annotations

import pytest

from model_repo.storage import POINTER, StorageError, StorageUri


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
