"""`serving.supervised`: a server cannot outlive the process that started it, and leftovers are reclaimed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from serving.triton_local import OWNER_FILE, SCRATCH_PREFIX, process_identity, reclaim_scratch_dirs
from tests.procs import alive, wait_gone

# A starter like TritonServer: keeps the pipe's write end, runs a command under the supervisor that
# leaves a grandchild in the group (as Triton leaves its python stubs), prints the pids, then waits.
STARTER = textwrap.dedent(
    """
    import os, subprocess, sys, time
    read_end, write_end = os.pipe()
    command = ["sh", "-c", "sleep 300 & echo $!; exec sleep 300"]
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "serving.supervised", "--watch-fd", str(read_end), "--cleanup", sys.argv[1],
         "--grace", "2", "--", *command],
        pass_fds=(read_end,), start_new_session=True, stdout=subprocess.PIPE, text=True,
    )
    os.close(read_end)
    grandchild = supervisor.stdout.readline().strip()
    print(supervisor.pid, grandchild, flush=True)
    time.sleep(300)
    """
)


def test_a_killed_starter_takes_the_whole_group_and_its_scratch_with_it(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    starter = subprocess.Popen(
        [sys.executable, "-c", STARTER, str(scratch)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert starter.stdout is not None
        supervisor, grandchild = (int(word) for word in starter.stdout.readline().split())
        members = [supervisor, grandchild]
        assert all(alive(pid) for pid in members)
        starter.kill()  # as SIGKILL or the OOM killer would: no cleanup code runs in the starter
        starter.wait(timeout=10)
        assert wait_gone(members, 20) == []
        assert not scratch.exists()
    finally:
        if starter.poll() is None:
            starter.kill()


def test_when_the_command_exits_its_leftovers_go_and_its_status_is_kept(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "serving.supervised", "--watch-fd", str(read_end), "--grace", "2", "--",
             "sh", "-c", "sleep 300 & echo $!; exit 3"],
            pass_fds=(read_end,), capture_output=True, text=True, timeout=60, start_new_session=True,
        )  # fmt: skip
    finally:
        os.close(read_end)
        os.close(write_end)
    assert done.returncode == 3
    assert wait_gone([int(done.stdout.strip())], 20) == []


def test_scratch_directories_of_gone_owners_are_reclaimed(tmp_path: Path) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_owner = tmp_path / f"{SCRATCH_PREFIX}dead"
    live_owner = tmp_path / f"{SCRATCH_PREFIX}live"
    unowned = tmp_path / f"{SCRATCH_PREFIX}making"  # no owner file yet: another starter is creating it
    for folder in (dead_owner, live_owner, unowned):
        folder.mkdir()
    (dead_owner / OWNER_FILE).write_text(f"{gone.stdout.strip()} 1")
    (live_owner / OWNER_FILE).write_text(process_identity(os.getpid()) or "")
    assert reclaim_scratch_dirs(tmp_path) == [dead_owner]
    assert live_owner.exists() and unowned.exists() and not dead_owner.exists()
