"""A broken canary on the local stack: how fast the gateway rolls it back, and whether anything fails after.

    python benchmarks/bench_canary.py                  # the tiny random test model (the rollback is the
                                                       # gateway's work; the model's speed does not matter)
    python benchmarks/bench_canary.py --model-repo DIR # a built repository of your own

The stable version and a copy that fails every `--fail-every`-th request (serving/canary_faults.py) run as
two real Triton processes behind the gateway (serving/local_stack.py), the canary taking `--weight` percent
of conversations. `--clients` threads each send one-turn conversations (each a new conversation, so the
split applies) until the gateway reports the rollback on /canary, then `--after` more each. Printed: the
requests and seconds until the rollback, what the canary had served and failed when it was judged, the
failures seen before and after the rollback (target: none after), against the configured window.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from serving.local_stack import LocalStack, LocalStackConfig  # noqa: E402
from serving.triton_local import free_port  # noqa: E402


def _tiny_repository(root: Path) -> Path:
    from model_repo.checkpoint import make_tiny_checkpoint
    from model_repo.export import export_onnx
    from model_repo.layout import write_repository
    from model_repo.spec import GenerationSpec

    onnx = export_onnx(make_tiny_checkpoint(root / "checkpoint"), root / "onnx").model_dir
    return write_repository(root / "repo", onnx, GenerationSpec(model_name="llm"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repo", type=Path, help="a built repository (default: the tiny test model)")
    parser.add_argument("--weight", type=float, default=20.0, help="percent of conversations to the canary")
    parser.add_argument("--fail-every", type=int, default=3, help="the canary fails every N-th request")
    parser.add_argument("--min-requests", type=int, default=10, help="canary requests before it is judged")
    parser.add_argument("--window", type=float, default=60.0, help="rollback window, seconds")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--after", type=int, default=25, help="requests per client after the rollback")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        repository = args.model_repo or _tiny_repository(Path(scratch))
        config = LocalStackConfig(
            repository,
            port=free_port(),
            canary_repository=repository,
            canary_weight=args.weight,
            canary_fail_every=args.fail_every,
            canary_min_requests=args.min_requests,
            canary_window_s=args.window,
            startup_timeout_s=300,
        )
        with LocalStack(config) as stack:
            rolled_back = threading.Event()
            lock = threading.Lock()
            counts = {"before": 0, "failed_before": 0, "after": 0, "failed_after": 0}
            started = time.perf_counter()
            rollback_at: list[float] = []
            headers = {"Authorization": f"Bearer {stack.api_key}"}

            def client(index: int) -> None:
                with httpx.Client(base_url=stack.url, headers=headers, timeout=120) as http:
                    sent_after, n = 0, 0
                    while sent_after < args.after:
                        after = rolled_back.is_set()  # decided before this request was sent
                        messages = [{"role": "user", "content": f"client {index} conversation {n}: hello"}]
                        body = {"model": stack.model_name, "messages": messages, "max_tokens": 8}
                        ok = http.post("/v1/chat/completions", json=body).status_code == 200
                        n += 1
                        with lock:
                            phase = "after" if after else "before"
                            counts[phase] += 1
                            counts[f"failed_{phase}"] += 0 if ok else 1
                        sent_after += 1 if after else 0
                        if not rolled_back.is_set() and http.get("/canary").json()["decision"] is not None:
                            rollback_at.append(time.perf_counter() - started)
                            rolled_back.set()
                        if n > 2000:
                            return

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            status = httpx.get(stack.url + "/canary").json()
    decision = status["decision"] or {}
    judged = decision.get("figures", {}).get("canary", {})
    seconds = min(rollback_at) if rollback_at else float("nan")
    print(
        f"\ncanary: {args.weight:g}% of conversations, fails every {args.fail_every}; {args.clients} clients"
    )
    print(
        f"policy: window {args.window:g} s, judged from {args.min_requests} canary requests, default margins"
    )
    print(f"rolled back after {counts['before']} requests, {seconds:.1f} s (window {args.window:g} s)")
    print(f"the canary when judged: {judged.get('requests')} requests, {judged.get('errors')} errors")
    print(f"reason: {decision.get('reason')}")
    print(f"failed before the rollback: {counts['failed_before']} of {counts['before']}")
    print(f"failed after the rollback : {counts['failed_after']} of {counts['after']} (target 0)")


if __name__ == "__main__":
    main()
