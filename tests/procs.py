"""Live processes by parent or process group, read from /proc (to prove nothing is left running)."""

from __future__ import annotations

import time
from pathlib import Path

# Fields of /proc/<pid>/stat after the command name: 0 state, 1 parent pid, 2 process group.
PARENT, GROUP = 1, 2


def live_processes(field: int, value: int) -> list[int]:
    """Pids of non-zombie processes whose stat `field` (PARENT or GROUP) equals `value`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[field]) == value and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """Live descendants of `pid` (children, their children, ...), read once from /proc."""
    found: list[int] = []
    frontier = [pid]
    while frontier:
        children = [child for parent in frontier for child in live_processes(PARENT, parent)]
        found += children
        frontier = children
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def marked_processes(variable: str, value: str) -> list[str]:
    """`pid command` of every live process whose environment holds `variable=value`."""
    marker = f"{variable}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and alive(int(entry.name)):
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    found.append(f"{entry.name} {command.strip()}")
            except OSError:
                continue
    return found


def wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    """The pids still alive once they are all gone or `timeout_s` passed (a bounded wait for the
    condition, not a timing test)."""
    deadline = time.monotonic() + timeout_s
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [pid for pid in pids if alive(pid)]
