"""Building tritonform's CPU operator library: cached by content, and every failure (no header, no
compiler, a compile error, a bad download) is a CpuOpsError that says what to do."""

from __future__ import annotations

import io
import lzma
import tarfile
from pathlib import Path

import pytest

from model_repo import cpu_ops
from model_repo.cpu_ops import HEADER, HEADERS_ENV, LIBRARY_NAME, CpuOpsError, build_library
from model_repo.runtime.q4_fusion import library_kernel


@pytest.fixture
def fresh_cache(tmp_path: Path, cpu_ops_library: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty kit cache whose header comes from $TRITONFORM_ORT_HEADERS (the real one, no download)."""
    header = next(Path(cpu_ops_library).parents[1].glob(f"headers/*/{HEADER}"), None)
    if header is None:  # the session library was built against $TRITONFORM_ORT_HEADERS already
        header = Path(cpu_ops.os.environ[HEADERS_ENV]) / HEADER
    monkeypatch.setattr(cpu_ops, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setenv(HEADERS_ENV, str(header.parent))
    monkeypatch.delenv("CC", raising=False)
    return tmp_path / "cache"


def test_the_library_is_built_once_and_reused(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    library = build_library(said.append)
    assert library.name == LIBRARY_NAME and library.is_relative_to(fresh_cache)
    assert said == ["compiling tritonform's CPU operators (q4_offset_matmul.c)"]
    assert library_kernel(str(library)) in ("avx512vnni", "avx2", "c")
    monkeypatch.setenv("CC", "false")  # a second build would fail: the cached library is returned
    assert build_library(said.append) == library and len(said) == 1


def test_no_compiler_says_how_to_get_one_or_do_without(
    fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(fresh_cache / "empty"))
    with pytest.raises(CpuOpsError, match=r"no C compiler.*apt-get install gcc.*TRITONFORM_CPU_OPS=off"):
        build_library()


def test_a_failed_compile_shows_the_command_and_the_way_out(
    fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", "false")
    failed = r"(?s)compiling q4_offset_matmul.c failed \(\S*false -O3.*CPU_OPS=off"
    with pytest.raises(CpuOpsError, match=failed):
        build_library()
    assert not list(fresh_cache.rglob(LIBRARY_NAME))  # nothing half-built is left to be reused


def test_a_header_folder_without_the_header_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(HEADERS_ENV, str(tmp_path))
    with pytest.raises(CpuOpsError, match=rf"{HEADERS_ENV}=.*no {HEADER} there"):
        build_library()


def _deb(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


def _data_tar_xz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path, content in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return lzma.compress(buffer.getvalue())


def test_the_header_is_read_out_of_a_debian_package() -> None:
    data = _data_tar_xz({f"./usr/include/onnxruntime/{HEADER}": b"/* c api */", "./usr/share/x": b"odd"})
    package = _deb({"debian-binary": b"2.0\n", "control.tar.xz": b"c", "data.tar.xz": data})
    member = cpu_ops._ar_member(package, "data.tar.xz")
    assert cpu_ops._member(member, f"usr/include/onnxruntime/{HEADER}") == b"/* c api */"
    with pytest.raises(CpuOpsError, match="not a Debian archive"):
        cpu_ops._ar_member(b"<html>404</html>", "data.tar.xz")
    with pytest.raises(CpuOpsError, match=r"has no data\.tar\.xz"):
        cpu_ops._ar_member(_deb({"debian-binary": b"2.0\n"}), "data.tar.xz")
    with pytest.raises(CpuOpsError, match="has no usr/include"):
        cpu_ops._member(_data_tar_xz({"./other": b""}), f"usr/include/onnxruntime/{HEADER}")


def _unlisted(_say: object) -> tuple[str, str]:
    raise CpuOpsError("Debian's package index lists no libonnxruntime-dev")


def test_a_download_that_fails_or_does_not_match_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(HEADERS_ENV, raising=False)
    monkeypatch.setattr(cpu_ops, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(cpu_ops, "_indexed_package", _unlisted)  # no second chance: the first error shows
    monkeypatch.setattr(cpu_ops, "HEADERS_PACKAGE", ("http://127.0.0.1:9/none.deb", "0" * 64))
    with pytest.raises(CpuOpsError, match=r"could not download .*none.deb.*install libonnxruntime-dev"):
        build_library()
    (tmp_path / "p.deb").write_bytes(b"!<arch>\n")
    monkeypatch.setattr(cpu_ops, "HEADERS_PACKAGE", ((tmp_path / "p.deb").as_uri(), "0" * 64))
    with pytest.raises(CpuOpsError, match="SHA-256 mismatch"):
        build_library()
    assert not list(tmp_path.rglob(HEADER))  # nothing of a refused download is kept


def test_once_debian_replaces_the_package_its_index_names_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A point release removes the pinned file from Debian's pool: the header comes from the package the
    index lists now, checked against the index's SHA-256."""
    import hashlib

    data = _data_tar_xz({f"./usr/include/onnxruntime/{HEADER}": b"/* newer c api */"})
    package = _deb({"debian-binary": b"2.0\n", "data.tar.xz": data})
    (tmp_path / "new.deb").write_bytes(package)
    current = ((tmp_path / "new.deb").as_uri(), hashlib.sha256(package).hexdigest())
    monkeypatch.delenv(HEADERS_ENV, raising=False)
    monkeypatch.setattr(cpu_ops, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(cpu_ops, "HEADERS_PACKAGE", ((tmp_path / "gone.deb").as_uri(), "0" * 64))
    monkeypatch.setattr(cpu_ops, "_indexed_package", lambda _say: current)
    folder = cpu_ops._headers(lambda _m: None)
    assert (folder / HEADER).read_bytes() == b"/* newer c api */" and folder.name == current[1][:16]


def test_the_package_index_is_read_stanza_by_stanza() -> None:
    index = (
        "Package: libonnxruntime1.21\nFilename: pool/main/o/onnxruntime/lib.deb\nSHA256: aa\n\n"
        "Package: libonnxruntime-dev\nVersion: 1.21.0+dfsg-1\nDescription: headers\n multi-line: text\n"
        "Filename: pool/main/o/onnxruntime/dev.deb\nSHA256: bb\n"
    )
    url, sha = cpu_ops.package_in_index(index, "libonnxruntime-dev")
    assert url == f"{cpu_ops.DEBIAN}/pool/main/o/onnxruntime/dev.deb" and sha == "bb"
    with pytest.raises(CpuOpsError, match="lists no libonnxruntime-doc"):
        cpu_ops.package_in_index(index, "libonnxruntime-doc")


def test_an_unwritable_cache_or_a_garbled_download_is_a_clear_error(
    tmp_path: Path, fresh_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong on the way is a CpuOpsError (serve and build then fall back with the reason),
    never another exception: a cache folder that cannot be made, a proxy's page instead of a package."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(cpu_ops, "cache_dir", lambda: tmp_path / "a-file" / "cache")
    with pytest.raises(CpuOpsError, match=r"could not build tritonform's CPU operators \(NotADirectoryError"):
        build_library()
    monkeypatch.delenv(HEADERS_ENV)
    monkeypatch.setattr(cpu_ops, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(cpu_ops, "_download", lambda url: b"<html>you are offline</html>")
    with pytest.raises(CpuOpsError, match="SHA-256 mismatch"):  # the index fails too: the first error shows
        build_library()
    with pytest.raises(CpuOpsError, match="is not a package index"):
        cpu_ops._indexed_package(lambda _m: None)
