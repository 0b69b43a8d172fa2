"""The model directory contract: generation.json round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_repo.runtime.contract import EngineError, GenerationMetadata
from model_repo.runtime.engine import Engine


def test_metadata_round_trips_and_rejects_missing_file(tmp_path: Path, tiny_engine: Engine) -> None:
    tiny_engine.metadata.save(tmp_path)
    assert GenerationMetadata.load(tmp_path) == tiny_engine.metadata
    with pytest.raises(EngineError, match="not found"):
        GenerationMetadata.load(tmp_path / "nowhere")
