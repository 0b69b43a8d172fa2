"""Peak memory of `tritonform build` per billion parameters: what a 7-8B build needs.

    python benchmarks/bench_build_memory.py                       # the default model and a ~0.5B one
    python benchmarks/bench_build_memory.py --sizes default        # only the default model (135M)

Each build runs in its own process (fp32 export + parity gate, no quantisation: the build's largest
step), and its peak resident memory (ru_maxrss of the child) is printed beside the parameter count, as
GB per billion parameters and extrapolated to 7B and 8B. "~0.5B" is a random-weight Qwen2-0.5B-shaped
checkpoint (hidden 896, 14/2 heads, MLP 4864) with 32 layers and the tiny test tokenizer's vocabulary,
so its parameters sit in the layers, as a 7-8B model's do. The machine is shared: memory figures are
stable, times are not.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, sys
from pathlib import Path
from model_repo.build import BuildOptions, build
out = Path(sys.argv[2])
report = build(BuildOptions(model=sys.argv[1], out=out, parity_tokens=16))
print(json.dumps({"parity": report["parity"]["passed"], "timings": report["timings_s"]}))
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


def measure(model: str, work: Path) -> dict[str, object]:
    """Build `model` in a child process; its peak RSS in GiB and the build's timings."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, model, str(work / "repo")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"build of {model} failed:\n{done.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak <= before:
        raise SystemExit("a larger build ran earlier in this process: measure one size per run")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"peak_rss_gib": peak / 1024 / 1024, "seconds": time.perf_counter() - t0, **result}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["default", "0.5b"], choices=["default", "0.5b"])
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from model_repo.checkpoint import fetch_default

    # smallest first: ru_maxrss of children is the largest child so far
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="bench-build-memory-") as tmp:
            work = Path(tmp)
            checkpoint = fetch_default() if size == "default" else half_billion(work / "checkpoint")
            count = parameters(checkpoint)
            figures = measure(str(checkpoint), work)
            per_billion = float(figures["peak_rss_gib"]) / (count / 1e9)  # type: ignore[arg-type]
            print(
                f"{size}: {count / 1e6:.0f}M parameters, peak RSS {figures['peak_rss_gib']:.2f} GiB "
                f"= {per_billion:.1f} GiB per billion parameters "
                f"(fp32 export + parity, {figures['seconds']:.0f} s; "
                f"parity {'passed' if figures['parity'] else 'FAILED'}); "
                f"at that rate 7B: {7 * per_billion:.0f} GiB, 8B: {8 * per_billion:.0f} GiB"
            )


if __name__ == "__main__":
    main()
