"""Find the serving version of a model repository in object storage, in the cluster, at pod start.

`tritonform model upload` writes immutable versions under `PREFIX/versions/<id>/` and then flips the
`PREFIX/CURRENT` pointer (see model_repo/storage.py). In the cluster, an init container runs:

    python -m serving.model_locator resolve  --prefix s3://BUCKET/models --out /shared/repository
    python -m serving.model_locator tokenizer --prefix s3://BUCKET/models --model llm --dest /shared/model

`resolve` writes the current version's URI for Triton's `--model-repository`; `tokenizer` copies the
model's tokenizer.json and generation.json for the gateway (chat template, token counts). Both use
the pod's workload identity (no keys) and fail with one clear line when nothing was uploaded yet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model_repo.manifest import MANIFEST_FILE, engine_parts, engine_subdir
from model_repo.runtime.contract import METADATA_FILE, TOKENIZER_FILE
from model_repo.storage import StorageError, StorageUri, open_store, read_pointer

TOKENIZER_FILES = (TOKENIZER_FILE, METADATA_FILE)


class LocatorError(RuntimeError):
    """The bucket has no usable serving version; the message says what to do."""


def current_repository(prefix: str) -> str:
    """The URI of the version `PREFIX/CURRENT` names (Triton's `--model-repository` form)."""
    try:
        location = StorageUri.parse(prefix)
        pointer = read_pointer(open_store(location), location)
    except StorageError as exc:
        raise LocatorError(str(exc)) from None
    if not pointer or "repository" not in pointer:
        raise LocatorError(
            f"no model has been uploaded to {prefix} yet: run `tritonform model upload --stack <stack>`"
        )
    return str(pointer["repository"])


def fetch_tokenizer(prefix: str, model: str, dest: Path) -> list[Path]:
    """Copy the current version's tokenizer files for `model` into `dest`."""
    repository = StorageUri.parse(current_repository(prefix))
    try:
        store = open_store(repository)
        subdir = engine_subdir(store.get_bytes(repository.key(MANIFEST_FILE)))
        dest.mkdir(parents=True, exist_ok=True)
        written = []
        for name in TOKENIZER_FILES:
            parts = (*engine_parts(model, subdir), name)
            data = store.get_bytes(repository.key(*parts))
            if data is None:
                missing = repository.uri(*parts)
                raise LocatorError(f"{missing} is missing; rebuild the repository and upload it again")
            (dest / name).write_bytes(data)
            written.append(dest / name)
    except StorageError as exc:
        raise LocatorError(str(exc)) from None
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.model_locator", description=__doc__.splitlines()[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    resolve = commands.add_parser("resolve", help="write the serving version's URI to a file")
    resolve.add_argument("--prefix", required=True, help="the upload prefix, e.g. s3://BUCKET/models")
    resolve.add_argument("--out", required=True, type=Path, help="file to write the URI to")
    tokenizer = commands.add_parser("tokenizer", help="copy the serving version's tokenizer files")
    tokenizer.add_argument("--prefix", required=True, help="the upload prefix, e.g. s3://BUCKET/models")
    tokenizer.add_argument("--model", default="llm", help="model name in the repository (default llm)")
    tokenizer.add_argument("--dest", required=True, type=Path, help="folder to copy the files into")
    args = parser.parse_args(argv)
    try:
        if args.command == "resolve":
            uri = current_repository(args.prefix)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(uri)
            print(f"serving {uri}")
        else:
            for path in fetch_tokenizer(args.prefix, args.model, args.dest):
                print(f"copied {path}")
    except LocatorError as exc:
        print(f"model locator: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
