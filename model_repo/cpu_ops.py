"""tritonform's CPU operator library: compiled once on this machine, cached by content.

One operator for now, `tritonform.Q4OffsetMatMul` (runtime/kernels/q4_offset_matmul.c): a 4-bit
projection with exact block offsets in one node, where the standard graph needs four (see
runtime/q4_fusion.py). It is built against onnxruntime's C API header, which the onnxruntime wheel does
not ship; Debian packages it (libonnxruntime-dev), so the build fetches that package from Debian's
archive, checks its SHA-256, takes the one header it needs and compiles the C file with the machine's C
compiler. The library lands in ${TRITONFORM_CACHE:-~/.cache/tritonform}/cpu-ops/<digest>/, keyed by the
source, the header and the flags, so a changed kernel is rebuilt and an unchanged one costs nothing.

`tritonform serve` builds it before it starts Triton and passes its path to the model through
$TRITONFORM_CPU_OPS (runtime/q4_fusion.py reads it); TRITONFORM_CPU_OPS=off keeps the standard graph.
The header is C API version 21 (onnxruntime 1.21): any newer onnxruntime loads the library, its C API
being kept backwards compatible.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import lzma
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

from model_repo.checkpoint import cache_dir

SOURCE = Path(__file__).resolve().parent / "runtime" / "kernels" / "q4_offset_matmul.c"
LIBRARY_NAME = "libtritonform_cpu_ops.so"
HEADER = "onnxruntime_c_api.h"
DEBIAN = "https://deb.debian.org/debian"
# Debian 13's libonnxruntime-dev (onnxruntime 1.21.0): the address and SHA-256 its package index gives.
HEADERS_PACKAGE = (
    f"{DEBIAN}/pool/main/o/onnxruntime/libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb",
    "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08",
)
HEADERS_SUITE = "trixie"  # where to look the package up again once a point release replaces it
HEADERS_ENV = "TRITONFORM_ORT_HEADERS"  # a folder holding onnxruntime_c_api.h, instead of the download
FLAGS = ("-O3", "-std=gnu11", "-fPIC", "-shared", "-pthread", "-Wall")


class CpuOpsError(RuntimeError):
    """The library could not be built; the message says why and what to do."""


# What else a build can meet on the way (an unwritable cache, a truncated or garbled download):
# each becomes a CpuOpsError, so that serve and build fall back to onnxruntime's kernels with the reason.
_FAILURES = (OSError, lzma.LZMAError, tarfile.TarError, http.client.HTTPException, EOFError, ValueError)


def build_library(say: Callable[[str], None] | None = None) -> Path:
    """The library's path, compiled first when the cache lacks it. Raises `CpuOpsError`, whatever went
    wrong (its message says what and how to do without)."""
    try:
        return _build(say or (lambda _message: None))
    except CpuOpsError:
        raise
    except _FAILURES as exc:
        raise CpuOpsError(
            f"could not build tritonform's CPU operators ({type(exc).__name__}: {exc}); run with "
            "TRITONFORM_CPU_OPS=off to serve with onnxruntime's own kernels"
        ) from None


def _build(say: Callable[[str], None]) -> Path:
    header_dir = _headers(say)
    target = _target_dir(hashlib.sha256((header_dir / HEADER).read_bytes()).hexdigest())
    library = target / LIBRARY_NAME
    if library.is_file():
        return library
    compiler = shutil.which(os.environ.get("CC") or "cc") or shutil.which("gcc")
    if compiler is None:
        raise CpuOpsError(
            "no C compiler on PATH to build tritonform's CPU operators: install one (Debian/Ubuntu: "
            "apt-get install gcc) or run with TRITONFORM_CPU_OPS=off to serve with onnxruntime's own kernels"
        )
    say(f"compiling tritonform's CPU operators ({SOURCE.name})")
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        built = Path(tmp) / LIBRARY_NAME
        command = [compiler, *FLAGS, "-I", str(header_dir), "-o", str(built), str(SOURCE), "-lm"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise CpuOpsError(
                f"compiling {SOURCE.name} failed ({' '.join(command)}):\n{result.stderr.strip()[-2000:]}\n"
                "Run with TRITONFORM_CPU_OPS=off to serve with onnxruntime's own kernels."
            )
        os.replace(built, library)  # atomic: a reader sees the whole library or none
    return library


def _target_dir(header_digest: str) -> Path:
    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    digest.update(header_digest.encode())
    digest.update(" ".join(FLAGS).encode())
    return cache_dir() / "cpu-ops" / digest.hexdigest()[:16]


def _header_cache(sha256: str) -> Path:
    return cache_dir() / "cpu-ops" / "headers" / sha256[:16]


def _headers(say: Callable[[str], None]) -> Path:
    """A folder holding onnxruntime_c_api.h: $TRITONFORM_ORT_HEADERS, the cached copy, or Debian's
    package: the pinned one, or, once Debian has replaced it, the one its package index names now."""
    given = os.environ.get(HEADERS_ENV)
    if given:
        if not (Path(given) / HEADER).is_file():
            raise CpuOpsError(f"{HEADERS_ENV}={given}: no {HEADER} there; name onnxruntime's include folder")
        return Path(given)
    folder = _header_cache(HEADERS_PACKAGE[1])
    if (folder / HEADER).is_file():
        return folder
    try:
        return _fetch_header(*HEADERS_PACKAGE, say)
    except CpuOpsError as pinned:
        try:
            current = _indexed_package(say)
        except CpuOpsError:
            raise pinned from None
        if current == HEADERS_PACKAGE:
            raise
        cached = _header_cache(current[1])
        return cached if (cached / HEADER).is_file() else _fetch_header(*current, say)


def _fetch_header(url: str, sha256: str, say: Callable[[str], None]) -> Path:
    say(f"fetching onnxruntime's C API header ({url.rsplit('/', 1)[1]})")
    package = _download(url)
    if hashlib.sha256(package).hexdigest() != sha256:
        raise CpuOpsError(f"{url}: SHA-256 mismatch (expected {sha256}); not using it")
    header = _member(_ar_member(package, "data.tar.xz"), f"usr/include/onnxruntime/{HEADER}")
    folder = _header_cache(sha256)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{HEADER}.", delete=False) as partial:
        partial.write(header)  # a name of its own: two first runs at once do not trip on each other
    os.replace(partial.name, folder / HEADER)
    return folder


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return bytes(response.read())
    except (OSError, http.client.HTTPException) as exc:  # HTTPException: a truncated answer
        raise CpuOpsError(
            f"could not download {url} ({exc}); set {HEADERS_ENV} to a folder with {HEADER} "
            "(Debian/Ubuntu: apt-get install libonnxruntime-dev, then /usr/include/onnxruntime), "
            "or run with TRITONFORM_CPU_OPS=off"
        ) from None


def _indexed_package(say: Callable[[str], None]) -> tuple[str, str]:
    """(address, SHA-256) of libonnxruntime-dev as Debian's package index for HEADERS_SUITE lists it."""
    say(f"looking up libonnxruntime-dev in Debian {HEADERS_SUITE}'s package index")
    address = f"{DEBIAN}/dists/{HEADERS_SUITE}/main/binary-amd64/Packages.xz"
    try:
        index = lzma.decompress(_download(address))
    except lzma.LZMAError as exc:  # a proxy's error page, say
        raise CpuOpsError(f"{address} is not a package index ({exc})") from None
    return package_in_index(index.decode("utf-8", "replace"), "libonnxruntime-dev")


def package_in_index(index: str, package: str) -> tuple[str, str]:
    """(address, SHA-256) of `package` in a Debian Packages index (stanzas of `Field: value` lines)."""
    for stanza in index.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        if fields.get("Package") == package and "Filename" in fields and "SHA256" in fields:
            return f"{DEBIAN}/{fields['Filename']}", fields["SHA256"]
    raise CpuOpsError(f"Debian's package index lists no {package}")


def _ar_member(archive: bytes, name: str) -> bytes:
    """One member of a Debian package (an `ar` archive: an 8-byte magic, then 60-byte headers)."""
    if not archive.startswith(b"!<arch>\n"):
        raise CpuOpsError("the downloaded package is not a Debian archive")
    at = 8
    while at + 60 <= len(archive):
        header = archive[at : at + 60]
        member, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
        if member == name:
            return archive[at + 60 : at + 60 + size]
        at += 60 + size + (size % 2)
    raise CpuOpsError(f"the downloaded package has no {name}")


def _member(data_tar_xz: bytes, path: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(data_tar_xz))) as tar:
        for info in tar.getmembers():
            if info.name.lstrip("./") == path and info.isfile():
                extracted = tar.extractfile(info)
                if extracted is not None:
                    return extracted.read()
    raise CpuOpsError(f"the downloaded package has no {path}")
