"""Start and stop a real local Triton Inference Server (the binary bundled in `nvidia-pytriton`).

    with TritonServer(TritonServerConfig(model_repository=Path("out/repo"))) as server:
        print(server.grpc_url, server.http_url)   # "127.0.0.1:PORT", "http://127.0.0.1:PORT"

What it does (see shared/notes/ENVIRONMENT.md for why each step is needed):
- copies pytriton's `backends/` to a scratch directory and puts the python-backend stub for the
  running interpreter into `backends/python/`;
- puts this interpreter's libdir, then `nvidia_pytriton.libs`, first on `LD_LIBRARY_PATH`, and the
  venv's `bin` first on `PATH`, so model.py runs with this venv's packages;
- binds HTTP, gRPC and metrics to 127.0.0.1 on free ports (or the ports given, checked first);
- waits for `/v2/health/ready`, and if Triton exits or times out, raises `TritonStartError` with
  the models' load errors and the end of Triton's log;
- stops with SIGTERM to the process group, SIGKILL after a grace period, and removes the scratch
  directory, so no process or temporary directory is left behind;
- runs Triton under `serving.supervised`, in a process group of its own that dies with this process
  however it ends (SIGKILL, the OOM killer): the supervisor watches a pipe whose write end only this
  process holds, and at its end of file stops the group and removes the scratch directory. Scratch
  directories whose owner is gone are also removed at the next start.

`model_repository` may also be `s3://`, `gs://` or `as://` (Triton reads those itself); pass the
credentials / emulator endpoints through `extra_env`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

LOOPBACK = "127.0.0.1"
SCRATCH_PREFIX = "tritonform-triton-"
OWNER_FILE = "owner"  # "<pid> <start time>" of the process that made the scratch directory


class TritonStartError(RuntimeError):
    """Triton could not start or its models failed to load; the message says why."""


@dataclass(frozen=True)
class TritonServerConfig:
    """How to run the local server. Ports of 0 mean: pick a free loopback port."""

    model_repository: Path | str
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    startup_timeout_s: float = 120.0
    exit_timeout_s: int = 5
    model_control_mode: Literal["none", "explicit", "poll"] = "none"
    load_models: tuple[str, ...] = ()  # explicit mode only; empty: nothing loaded at start
    log_verbose: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Bundle:
    """Where nvidia-pytriton put the server binary and its libraries."""

    binary: Path
    backends: Path
    stub: Path
    libs: Path


def _find_bundle() -> _Bundle:
    try:
        import pytriton
    except ImportError:
        raise TritonStartError(
            "nvidia-pytriton is not installed; `pip install nvidia-pytriton==0.7.0` brings the server"
        ) from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    bundle = _Bundle(
        binary=root / "bin" / "tritonserver",
        backends=root / "backends",
        stub=root / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs",
    )
    for path in (bundle.binary, bundle.backends, bundle.stub):
        if not path.exists():
            raise TritonStartError(f"nvidia-pytriton is incomplete: {path} is missing")
    return bundle


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _check_port_free(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            raise TritonStartError(
                f"{what} port {port} on {LOOPBACK} is already in use; choose another or pass 0"
            ) from None


def process_identity(pid: int) -> str | None:
    """ "<pid> <start time in clock ticks>": names one process even after its pid is reused; None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else f"{pid} {fields[19]}"


def reclaim_scratch_dirs(root: Path | None = None) -> list[Path]:
    """Remove scratch directories whose owner process is gone (a starter killed before the supervisor
    could clean up, e.g. both by the OOM killer); returns what was removed."""
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        try:
            owner = (folder / OWNER_FILE).read_text().strip()
        except OSError:
            continue  # not ours, or still being created
        pid = int(owner.split()[0]) if owner[:1].isdigit() else -1
        if process_identity(pid) != owner:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _is_remote(repository: Path | str) -> bool:
    return isinstance(repository, str) and re.match(r"^(s3|gs|as)://", repository) is not None


class TritonServer:
    """A running local Triton; use as a context manager (or call `start` / `stop`)."""

    def __init__(self, config: TritonServerConfig) -> None:
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None
        self._scratch: Path | None = None
        self._log_file: Path | None = None
        self._watch_fd: int | None = None  # closing it (or dying) tells the supervisor to stop Triton
        self.http_port = self.grpc_port = self.metrics_port = 0

    # -- addresses --------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """`host:port` as tritonclient.grpc wants it."""
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Launch Triton and wait until it is ready; raise `TritonStartError` otherwise."""
        if self._process is not None:
            raise TritonStartError("this server is already running")
        repository = self.config.model_repository
        if not _is_remote(repository):
            path = Path(repository)
            if not path.is_dir():
                raise TritonStartError(f"model repository {path} does not exist or is not a directory")
            repository = str(path.resolve())
        bundle = _find_bundle()
        ports = {}
        for what in ("http", "grpc", "metrics"):
            port = getattr(self.config, f"{what}_port")
            if port:
                _check_port_free(port, what)
            ports[what] = port or free_port()
        self.http_port, self.grpc_port, self.metrics_port = ports["http"], ports["grpc"], ports["metrics"]

        reclaim_scratch_dirs()
        self._scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
        try:
            (self._scratch / OWNER_FILE).write_text(process_identity(os.getpid()) or "")
            backends = self._scratch / "backends"
            shutil.copytree(bundle.backends, backends)
            shutil.copy2(bundle.stub, backends / "python" / "triton_python_backend_stub")
            self._log_file = self._scratch / "triton.log"
            command = [str(bundle.binary), *self._arguments(str(repository), backends)]
            self._process = self._supervised(command, self._environment(bundle))
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _supervised(self, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start `command` under `serving.supervised`, its own process group, tied to this process."""
        assert self._scratch is not None and self._log_file is not None
        read_end, self._watch_fd = os.pipe()  # the write end stays here, never inherited
        grace = self.config.exit_timeout_s + 5
        supervisor = [sys.executable, "-m", "serving.supervised", "--watch-fd", str(read_end)]
        supervisor += ["--cleanup", str(self._scratch), "--grace", str(grace), "--", *command]
        try:
            with open(self._log_file, "wb") as log:
                return subprocess.Popen(
                    supervisor,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    pass_fds=(read_end,),
                    start_new_session=True,  # its own group: Ctrl-C reaches only us, stop() reaps all
                )
        finally:
            os.close(read_end)

    def _arguments(self, repository: str, backends: Path) -> list[str]:
        c = self.config
        args = [
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            f"--http-address={LOOPBACK}",
            f"--http-port={self.http_port}",
            f"--grpc-address={LOOPBACK}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={LOOPBACK}",
            f"--metrics-port={self.metrics_port}",
            "--pinned-memory-pool-byte-size=0",
            "--cuda-memory-pool-byte-size=0:0",
            "--allow-gpu-metrics=false",
            f"--exit-timeout-secs={c.exit_timeout_s}",
            f"--model-control-mode={c.model_control_mode}",
            f"--log-verbose={c.log_verbose}",
        ]
        args += [f"--load-model={name}" for name in c.load_models]
        return args + list(c.extra_args)

    def _environment(self, bundle: _Bundle) -> dict[str, str]:
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        library_path = [libdir, str(bundle.libs), env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in library_path if p)
        env["PATH"] = ":".join(p for p in (str(Path(sys.executable).parent), env.get("PATH", "")) if p)
        env.update(self.config.extra_env)
        return env

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.config.startup_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise TritonStartError(
                    f"Triton exited with code {self._process.returncode} before it was ready.\n"
                    + self._diagnosis()
                )
            if self._http_status("/v2/health/ready") == 200:
                return
            time.sleep(0.2)
        raise TritonStartError(
            f"Triton was not ready after {self.config.startup_timeout_s:.0f} s.\n" + self._diagnosis()
        )

    def _http_status(self, path: str, data: bytes | None = None) -> int:
        try:
            with urllib.request.urlopen(self.http_url + path, data=data, timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return 0

    @property
    def stop_timeout_s(self) -> float:
        """The longest `stop()` can take: Triton's own exit timeout, then the SIGKILL fallbacks."""
        return float(self.config.exit_timeout_s + 20)

    def stop(self) -> None:
        """Stop Triton and everything it started; remove the scratch directory. Idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=self.config.exit_timeout_s + 10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if process is not None:
            # python-backend stubs share the group; make sure none outlives the server
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._watch_fd is not None:
            os.close(self._watch_fd)
            self._watch_fd = None
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    # -- diagnostics ------------------------------------------------------------------------
    def log_text(self) -> str:
        """Triton's log so far (empty after `stop`)."""
        if self._log_file is None or not self._log_file.exists():
            return ""
        return self._log_file.read_text(encoding="utf-8", errors="replace")

    def model_states(self) -> list[dict[str, str]]:
        """Repository index: name, version, state and reason (the load error) of every model."""
        try:
            request = urllib.request.Request(self.http_url + "/v2/repository/index", data=b"{}")
            with urllib.request.urlopen(request, timeout=5) as response:
                return list(json.load(response))
        except (urllib.error.URLError, OSError, ValueError):
            return []

    def _diagnosis(self) -> str:
        log = self.log_text()
        errors = [
            line.strip()
            for line in log.splitlines()
            if (
                re.match(r"^E\d{4} ", line) or re.search(r"failed to load|error:|UNAVAILABLE|Unable to", line)
            )
            and "CudaDriverHelper" not in line  # harmless on CPU-only machines
        ]
        for model in self.model_states():
            if model.get("state") not in (None, "READY"):
                errors.append(f"model {model.get('name')}: {model.get('state')} {model.get('reason', '')}")
        tail = "\n".join(log.splitlines()[-25:])
        found = "\n".join(dict.fromkeys(errors)) or "(no load error found in the log)"
        return f"Load errors:\n{found}\n--- end of Triton's log ---\n{tail}"
