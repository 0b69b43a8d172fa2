"""A deliberately broken copy of a model repository, to rehearse a canary's automatic rollback.

`write_failing_copy(repository, dest, fail_every=N)` copies a built repository and makes its Triton model
answer every N-th request with an INTERNAL error (the model's own error path, as a real fault would), the
others as the original. `tritonform serve --canary DIR --canary-fail-every N`, the canary test and
benchmarks/bench_canary.py serve it as the canary beside the unbroken stable version, so the rollback is
seen against real Triton processes. Never upload such a copy: it exists for rehearsals only.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# Appended to the copy's model.py: the class Triton loads wraps the original's `execute`.
_BREAK = """

# --- written by serving/canary_faults.py: a rehearsal copy that fails every {every}-th request ---
_UnbrokenModel = TritonPythonModel


class TritonPythonModel(_UnbrokenModel):  # type: ignore[no-redef]
    def execute(self, requests):  # type: ignore[no-untyped-def]
        kept = []
        for request in requests:
            self._rehearsal_count = getattr(self, "_rehearsal_count", 0) + 1
            if self._rehearsal_count % {every} == 0:
                self._send_error(request.get_response_sender(), "rehearsed canary fault", "INTERNAL")
            else:
                kept.append(request)
        return super().execute(kept) if kept else None
"""


def write_failing_copy(repository: Path, dest: Path, fail_every: int) -> Path:
    """Copy `repository` to `dest` with every model.py failing each `fail_every`-th request; `dest`."""
    if fail_every < 1:
        raise ValueError(f"fail_every must be at least 1, got {fail_every}")
    models = sorted(repository.glob("*/[0-9]*/model.py"))
    if not models:
        raise ValueError(f"{repository} holds no python-backend model.py to break")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(repository, dest, ignore=shutil.ignore_patterns("__pycache__"))
    for model in models:
        copy = dest / model.relative_to(repository)
        copy.write_text(copy.read_text(encoding="utf-8") + _BREAK.format(every=fail_every), encoding="utf-8")
    return dest
