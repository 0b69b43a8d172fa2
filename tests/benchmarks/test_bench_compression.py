"""bench_compression's bookkeeping: a step's cache key follows its inputs' content, a finished step is
reused and an unfinished one redone, the width pruning keeps the size of the dropped layers, and the
prompts are distinct."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_compression


def test_a_key_changes_with_a_files_content_not_its_name(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("same")
    b.write_text("same")
    assert bench_compression.key(a, 1) == bench_compression.key(b, 1)
    b.write_text("changed")
    assert bench_compression.key(a, 1) != bench_compression.key(b, 1)
    assert bench_compression.key(a, 1) != bench_compression.key(a, 2)


def test_a_finished_step_is_reused_and_an_unfinished_one_redone(tmp_path: Path) -> None:
    calls: list[Path] = []

    def make(out: Path) -> None:
        calls.append(out)
        out.mkdir()
        (out / "done").write_text("x")

    timings: dict[str, float] = {}
    first = bench_compression.cached(tmp_path / "step-abc", "done", make, timings)
    assert (first / "done").is_file() and calls[0].name == ".step-abc.tmp" and "step" in timings
    bench_compression.cached(tmp_path / "step-abc", "done", make, timings)
    assert len(calls) == 1
    (tmp_path / "step-def").mkdir()  # a step left without its marker (interrupted) is made again
    bench_compression.cached(tmp_path / "step-def", "done", make, timings)
    assert len(calls) == 2 and (tmp_path / "step-def" / "done").is_file()


def test_width_pruning_removes_as_many_weights_as_the_dropped_layers() -> None:
    """SmolLM2-135M's shape: 8 of 30 layers hold as many weights as 1536 -> 992 MLP channels."""
    config = {
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3,
    }  # fmt: skip
    keep = bench_compression.mlp_keep_for_same_size(config, 8)
    assert round(keep * 1536) in range(980, 1000)


def test_prompts_are_distinct_writing_prompts() -> None:
    asked = bench_compression.prompts(192)
    assert len(asked) == 192 and len({p[0]["content"] for p in asked}) == 192
    assert all(p[0]["role"] == "user" for p in asked)
