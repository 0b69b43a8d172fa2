"""Lay out a Triton model repository from exported artefacts.

    write_repository(out_dir, artefacts_dir, spec) -> Path

- `out_dir`: the repository to create (Triton's `--model-repository`). Written next to it under a
  temporary name and renamed into place at the end (`replaced_atomically`), so a failure never leaves
  a half-written repository where a good one was (a previous repository at `out_dir` is replaced only
  then).
- `artefacts_dir`: the engine's model directory (model.onnx [+ model.onnx.data], tokenizer.json,
  generation.json, anything else the build put there); copied as is.
- `spec`: `model_repo.spec.GenerationSpec`.

Result (self-contained: the NGC container needs only onnxruntime(-gpu), tokenizers, numpy and llguidance):

    out_dir/
      REPOSITORY.json                 manifest: spec, every file's size and sha256 (model_repo.manifest)
      <spec.model_name>/
        config.pbtxt                  rendered from the spec (model_repo/templates/config.pbtxt.j2)
        1/
          model.py                    model_repo/python_model/model.py (the Triton adapter)
          tritonform_runtime/         model_repo/runtime/*.py (the engine, batching, scheduler)
          <spec.engine_subdir>/       the artefacts
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from model_repo.manifest import MANIFEST_FILE, MODEL_VERSION, write_manifest
from model_repo.runtime.contract import METADATA_FILE, TOKENIZER_FILE
from model_repo.spec import GenerationSpec, python_model_config, render_model_config

REQUIRED_ARTEFACTS = (METADATA_FILE, TOKENIZER_FILE)
RUNTIME_PACKAGE = "tritonform_runtime"  # the name model.py looks for next to itself
_PACKAGE = Path(__file__).parent


class LayoutError(ValueError):
    """The artefacts or the output location cannot make a repository; the message says why."""


def write_repository(out_dir: Path | str, artefacts_dir: Path | str, spec: GenerationSpec) -> Path:
    """Write the repository for `spec` with the artefacts; returns `out_dir` (see module docs)."""
    out_dir, artefacts_dir = Path(out_dir), Path(artefacts_dir)
    _check_artefacts(artefacts_dir)
    with replaced_atomically(out_dir) as staging:
        model_dir = staging / spec.model_name
        version_dir = model_dir / MODEL_VERSION
        version_dir.mkdir(parents=True)
        (model_dir / "config.pbtxt").write_text(render_model_config(python_model_config(spec)), "utf-8")
        shutil.copy2(_PACKAGE / "python_model" / "model.py", version_dir / "model.py")
        _copy_runtime(version_dir / RUNTIME_PACKAGE)
        shutil.copytree(artefacts_dir, version_dir / spec.engine_subdir)
        info = _built_as(artefacts_dir)
        write_manifest(staging, {"backend": "onnx", "spec": _spec_dict(spec), **info})
    return out_dir


def _built_as(artefacts_dir: Path) -> dict[str, str]:
    """What the manifest records of how the engine was built: its float type and quantisation (read
    from generation.json; defaults for files written before these fields existed)."""
    data = json.loads((artefacts_dir / METADATA_FILE).read_text(encoding="utf-8"))
    data = data if isinstance(data, dict) else {}
    return {"dtype": str(data.get("dtype", "float32")), "quantization": str(data.get("quantization", "none"))}


def _copy_runtime(target: Path) -> None:
    """Copy the runtime package's modules (its `*.py` files, nothing compiled) into `target`."""
    target.mkdir()
    for module in sorted((_PACKAGE / "runtime").glob("*.py")):
        shutil.copy2(module, target / module.name)


@contextmanager
def replaced_atomically(out_dir: Path) -> Iterator[Path]:
    """A fresh staging directory next to `out_dir` to write a repository into; when the block ends
    without an error it is renamed to `out_dir` (replacing an old repository only then), otherwise it
    is removed and `out_dir` stays as it was."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield staging
        _swap_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_artefacts(artefacts_dir: Path) -> None:
    if not artefacts_dir.is_dir():
        raise LayoutError(f"artefacts directory {artefacts_dir} does not exist; run the export first")
    missing = [name for name in REQUIRED_ARTEFACTS if not (artefacts_dir / name).is_file()]
    if not any(artefacts_dir.glob("*.onnx")):
        missing.append("*.onnx")
    if missing:
        raise LayoutError(f"artefacts directory {artefacts_dir} lacks {', '.join(missing)}")


def _spec_dict(spec: Any) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(spec), default=str))


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Rename the finished staging directory to `out_dir`, replacing an old one only at the end."""
    old: Path | None = None
    if out_dir.exists() or out_dir.is_symlink():
        if not out_dir.is_dir():
            raise LayoutError(f"{out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).is_file():
            raise LayoutError(
                f"{out_dir} is not empty and is not a tritonform repository; choose another --out"
            )
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    try:
        os.replace(staging, out_dir)
    except BaseException:
        if old is not None:
            os.replace(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
