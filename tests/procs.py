"""Live processes by parent or process group, read from /proc (to prove nothing is left running)."""

from __future__ import annotations

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
