"""Run a server so that it cannot outlive the process that started it, however that process ends.

    python -m serving.supervised --watch-fd FD [--cleanup DIR] [--grace SECONDS] -- COMMAND [ARG ...]

The starter (`serving.triton_local.TritonServer`) keeps the write end of a pipe and passes the read end
as FD. This small supervisor leads a process group and session of its own (so a terminal's Ctrl-C
reaches only the starter, which stops the server cleanly), runs COMMAND in it, and waits for either:

- COMMAND to exit: the supervisor ends the rest of the group (Triton's python-backend stubs do not
  exit when Triton dies) and exits with COMMAND's status;
- end of file on FD: the starter is gone without stopping the server (SIGKILL, the OOM killer, a
  crash). The supervisor sends SIGTERM to the group, waits `--grace` seconds, kills what is left,
  removes the `--cleanup` directory, and exits.

A SIGTERM to the group (the starter's normal stop) is passed on to COMMAND, which shuts down; the
supervisor then exits as above. COMMAND also dies (SIGKILL) if the supervisor itself is killed.
Linux only: it reads /proc to find the group's members.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
POLL_S = 0.2


def group_members(group: int) -> list[int]:
    """Pids of the live (non-zombie) processes in process group `group`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the supervisor dies (the supervisor is single-threaded)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def end_group(child: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM to the child, then SIGKILL to every other member of our group that remains."""
    me = os.getpid()
    if child.poll() is None:
        child.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=grace_s)
    deadline = time.monotonic() + grace_s
    while True:
        others = [pid for pid in group_members(os.getpgrp()) if pid != me]
        if not others:
            break
        sig = signal.SIGKILL if time.monotonic() >= deadline or child.poll() is not None else signal.SIGTERM
        for pid in others:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(POLL_S)
        child.poll()  # reap it if it has exited


def supervise(watch_fd: int, command: list[str], cleanup: Path | None, grace_s: float) -> int:
    """Run `command` until it exits or `watch_fd` reaches end of file; see the module docs."""
    if os.getpgrp() != os.getpid():
        os.setsid()  # lead our own session and group when the starter did not make us do so
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the starter decides when to stop
    # preexec_fn is safe here: this process has no other thread.
    child = subprocess.Popen(command, preexec_fn=_die_with_parent)

    def pass_on(_signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, pass_on)
    orphaned = False
    while child.poll() is None:
        readable, _, _ = select.select([watch_fd], [], [], POLL_S)
        if readable and not os.read(watch_fd, 1):
            orphaned = True  # end of file: the starter is gone
            break
    end_group(child, grace_s)
    if orphaned and cleanup is not None:
        shutil.rmtree(cleanup, ignore_errors=True)
    code = child.returncode if child.returncode is not None else 1
    return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.supervised", description=__doc__.splitlines()[0])
    parser.add_argument("--watch-fd", type=int, required=True, help="read end of the starter's pipe")
    parser.add_argument("--cleanup", type=Path, help="directory to remove if the starter dies")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG ...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    return supervise(args.watch_fd, command, args.cleanup, args.grace)


if __name__ == "__main__":
    sys.exit(main())
