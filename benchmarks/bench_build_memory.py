"""Peak memory of `tritonform build` per billion parameters, fp32 and fp16: what a 7-8B build needs.

    python benchmarks/bench_build_memory.py                                   # every size, both dtypes
    python benchmarks/bench_build_memory.py --sizes tiny default --dtypes float16

Each build runs in its own process (no quantisation; fp32: export + parity gate, fp16: fp32 reference +
export + quality gate) and reports its own peak resident memory (ru_maxrss) and the peak reached by the
end of each step, so the step that sets the peak is named. Per dtype, a straight line through the points
(GiB = libraries + bytes per parameter x parameters) is fitted by least squares and extrapolated to 7B
and 8B. "tiny" is the test suite's random Llama (<1M parameters: the libraries alone); "default" the
default model (135M); "0.5b" a random-weight Qwen2-0.5B-shaped checkpoint (hidden 896, 14/2 heads, MLP
4864) with 32 layers and the tiny test tokenizer's vocabulary, so its parameters sit in the layers, as a
7-8B model's do. A random model's fp16 gate may fail on near-tied logits: the peak is still reported
(the gate is the build's last step) with the gate's outcome. The machine is shared: memory figures are
stable, times are not.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = ("tiny", "default", "0.5b")

_CHILD = """
import json, resource, sys
from pathlib import Path
from model_repo.build import BuildOptions, build
from model_repo.gates import GateError
peaks = {}
def on_step(name, done):
    peaks[name] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3)
options = BuildOptions(model=sys.argv[1], out=Path(sys.argv[2]), dtype=sys.argv[3], parity_tokens=16)
try:
    report = build(options, on_step=on_step)
    gate = report.get("quality") or report.get("parity")
    outcome = "passed" if gate["passed"] else "FAILED"
except GateError as exc:
    outcome = f"FAILED ({exc})"[:200]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
print(json.dumps({"peak_rss_gib": peak, "step_peaks_gib": peaks, "gate": outcome}))
"""


def half_billion(folder: Path) -> Path:
    """A random-weight Qwen2 checkpoint with ~0.48B parameters, most of them in the layers."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

    from model_repo.checkpoint import CHATML_TEMPLATE, train_tiny_tokenizer

    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_tiny_tokenizer(),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHATML_TEMPLATE
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=32,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder


def parameters(checkpoint: Path) -> int:
    from safetensors import safe_open

    total = 0
    for shard in checkpoint.glob("*.safetensors"):
        with safe_open(str(shard), "np") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                total += _prod(f.get_slice(name).get_shape())
    return total


def _prod(shape: list[int]) -> int:
    out = 1
    for dim in shape:
        out *= int(dim)
    return out


def measure(model: str, work: Path, dtype: str) -> dict[str, object]:
    """Build `model` at `dtype` in a child process: its peak RSS in GiB, per step, and the gate."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, model, str(work / f"repo-{dtype}"), dtype],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"build of {model} ({dtype}) failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"seconds": time.perf_counter() - t0, **result}


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares GiB = a + b x billions of parameters; (a, b)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - b * mx, b


def checkpoint_for(size: str, work: Path) -> Path:
    from model_repo.checkpoint import fetch_default, make_tiny_checkpoint

    if size == "default":
        return fetch_default()
    if size == "tiny":
        return make_tiny_checkpoint(work / "checkpoint", "llama")
    return half_billion(work / "checkpoint")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=SIZES)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16"], choices=["float32", "float16"])
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    points: dict[str, list[tuple[float, float]]] = {dtype: [] for dtype in args.dtypes}
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-build-memory-") as tmp:
            work = Path(tmp)
            checkpoint = checkpoint_for(size, work)
            count = parameters(checkpoint)
            for dtype in args.dtypes:
                figures = measure(str(checkpoint), work, dtype)
                peak = float(figures["peak_rss_gib"])  # type: ignore[arg-type]
                points[dtype].append((count / 1e9, peak))
                steps = ", ".join(f"{k} {v:.2f}" for k, v in figures["step_peaks_gib"].items())  # type: ignore[attr-defined]
                print(
                    f"{size} {dtype}: {count / 1e6:.1f}M parameters, peak RSS {peak:.2f} GiB "
                    f"({figures['seconds']:.0f} s; gate {figures['gate']}); peak by the end of each step: "
                    f"{steps}",
                    flush=True,
                )
    for dtype, pts in points.items():
        if len({x for x, _ in pts}) < 2:
            continue
        a, b = fit(pts)
        bytes_per = b * 1024**3 / 1e9
        print(
            f"{dtype}: peak GiB = {a:.2f} + {b:.2f} x billions of parameters ({bytes_per:.1f} bytes per "
            f"parameter, {len(pts)} points); 7B: {a + 7 * b:.0f} GiB, 8B: {a + 8 * b:.0f} GiB"
        )


if __name__ == "__main__":
    main()
