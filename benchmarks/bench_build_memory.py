"""Peak memory of `tritonform build` per billion parameters, fp32 and fp16: what a 7-8B build needs.

    python benchmarks/bench_build_memory.py                                   # every size, both dtypes
    python benchmarks/bench_build_memory.py --sizes tiny default --dtypes float16

Each build runs in its own process (no quantisation; fp32: export + parity gate, fp16: fp32 reference +
export + quality gate) and reports its peak anonymous memory (RssAnon sampled every 50 ms: what must fit in
RAM) and its peak resident memory (ru_maxrss, which also counts the mapped checkpoint and ONNX data files
the build reads: page cache the kernel may drop, but re-reads while they are in use), overall and by the end
of each step, so the step that sets the peak is named. Per dtype, a straight line through the peaks (each
measure) (GiB = libraries + bytes per parameter x parameters) is fitted by least squares and extrapolated to
7B and 8B (model_repo/build_memory.py keeps the RSS fit, which the build states before it starts). "tiny" is
the test suite's random Llama (<1M parameters: the libraries alone); "default" the default model (135M);
"0.4b" a random-weight Qwen2-0.5B-shaped checkpoint (`qwen2_half_billion`), its parameters mostly in the
layers, as a 7-8B model's are. The 0.4b builds run shortened gates (2 decode prompts x 8 tokens, ~1200
characters of held-out text: the same objects in memory, a fraction of the time). A random model's fp16 gate
may fail on near-tied logits: the peak is still reported (the gate is the build's last step) with the gate's
outcome. The machine is shared: memory figures are stable, times are not.
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
SIZES = ("tiny", "default", "0.4b")

_CHILD = """
import json, resource, sys, threading, time
from pathlib import Path
from model_repo.build import BuildOptions, build
from model_repo.gates import GateError
anon = [0.0]
def sample():  # anonymous memory (what must fit in RAM; mapped files are page cache the kernel can drop)
    while True:
        for line in open('/proc/self/status'):
            if line.startswith('RssAnon:'):
                anon[0] = max(anon[0], int(line.split()[1]) / 1024**2)
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
peaks = {}
def on_step(name, done):
    peaks[name] = [round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2), round(anon[0], 2)]
if sys.argv[4] == "short":  # fewer gate tokens: the same objects in memory, a fraction of the time
    import model_repo.gates as gates
    gates.DECODE_PROMPTS, gates.DECODE_TOKENS = gates.DECODE_PROMPTS[:2], 8
    short = Path(sys.argv[2]).parent / "heldout-short.txt"
    short.write_text(gates.HELDOUT_TEXT.read_text()[:1200])
    gates.HELDOUT_TEXT = short
options = BuildOptions(model=sys.argv[1], out=Path(sys.argv[2]), dtype=sys.argv[3], parity_tokens=16)
try:
    report = build(options, on_step=on_step)
    gate = report.get("quality") or report.get("parity")
    outcome = "passed" if gate["passed"] else "FAILED"
    if "agreement" in gate:
        outcome += f" {gate['agreement']:.1%} / {gate['decode_agreement']:.1%}"
        outcome += f", perplexity {gate['perplexity_increase']:+.2%}"
except GateError as exc:
    outcome = f"FAILED ({exc})"[:200]
time.sleep(0.2)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
print(json.dumps({"peak_rss_gib": peak, "peak_anon_gib": anon[0], "step_peaks_gib": peaks, "gate": outcome}))
"""


def qwen2_half_billion(folder: Path) -> Path:
    """A random-weight Qwen2-0.5B-shaped checkpoint (24 layers, hidden 896, 14/2 heads, MLP 4864, tied
    embeddings) with the default model's tokenizer (49k tokens instead of Qwen2's 152k): ~0.4B
    parameters, most of them in the layers. Its held-out text is as many tokens as the default model's,
    so the gates do the same work per parameter."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from model_repo.checkpoint import fetch_default

    tok = AutoTokenizer.from_pretrained(str(fetch_default()))
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder


def measure(model: str, work: Path, dtype: str, short: bool) -> dict[str, object]:
    """Build `model` at `dtype` in a child process: its peak memory in GiB, per step, and the gate."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            model,
            str(work / f"repo-{dtype}"),
            dtype,
            "short" if short else "full",
        ],
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
    return qwen2_half_billion(work / "checkpoint")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=SIZES)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float16"], choices=["float32", "float16"])
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from model_repo.build_memory import parameter_count

    points: dict[tuple[str, str], list[tuple[float, float]]] = {
        (dtype, kind): [] for dtype in args.dtypes for kind in ("RSS", "anonymous")
    }
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-build-memory-") as tmp:
            work = Path(tmp)
            checkpoint = checkpoint_for(size, work)
            count = parameter_count(checkpoint)
            for dtype in args.dtypes:
                short = size == "0.4b"  # its gates at full length take ~3x the default model's hour here
                figures = measure(str(checkpoint), work, dtype, short)
                peak = float(figures["peak_anon_gib"])  # type: ignore[arg-type]
                points[dtype, "anonymous"].append((count / 1e9, peak))
                points[dtype, "RSS"].append((count / 1e9, float(figures["peak_rss_gib"])))  # type: ignore[arg-type]
                steps = figures["step_peaks_gib"].items()  # type: ignore[attr-defined]
                print(
                    f"{size} {dtype}: {count / 1e6:.1f}M parameters, peak {peak:.2f} GiB anonymous, "
                    f"{float(figures['peak_rss_gib']):.2f} GiB RSS ({figures['seconds']:.0f} s; "  # type: ignore[arg-type]
                    f"{'shortened ' if short else ''}gate {figures['gate']}); "
                    "by the end of each step (RSS/anonymous): "
                    + ", ".join(f"{k} {rss:.2f}/{a:.2f}" for k, (rss, a) in steps),
                    flush=True,
                )
    for (dtype, kind), pts in points.items():
        if len({x for x, _ in pts}) < 2:
            continue
        a, b = fit(pts)
        bytes_per = b * 1024**3 / 1e9
        print(
            f"{dtype}: peak {kind} GiB = {a:.2f} + {b:.2f} x billions of parameters "
            f"({bytes_per:.1f} bytes per parameter, {len(pts)} points); "
            f"7B: {a + 7 * b:.0f} GiB, 8B: {a + 8 * b:.0f} GiB"
        )


if __name__ == "__main__":
    main()
