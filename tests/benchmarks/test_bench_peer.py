"""The llama.cpp peer benchmark's pure parts: its command line, the instruction sets it builds
llama.cpp with, and the figures it prints (ratios, percentiles, the bandwidth ceiling). Nothing here
builds or starts a server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_peer
import llama_peer

CPUINFO = """processor	: 0
vendor_id	: GenuineIntel
flags		: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c bmi2 avx512f avx512_vnni amx_tile amx_int8
processor	: 1
flags		: fpu sse
"""


def test_cpu_flags_reads_the_first_cpus_flags() -> None:
    """The flags line of the first processor is what the build options follow."""
    flags = llama_peer.cpu_flags(CPUINFO)
    assert {"avx2", "fma", "avx512f", "amx_tile"} <= flags
    assert llama_peer.cpu_flags("processor : 0\n") == set()


def test_build_options_follow_the_cpu_and_never_enable_amx_or_native() -> None:
    """Each instruction set is on exactly when the CPU reports it; AMX (which the sandbox forbids)
    and the native build stay off even on a CPU that reports AMX."""
    options = llama_peer.ggml_cmake_options(llama_peer.cpu_flags(CPUINFO))
    assert "-DGGML_AVX2=ON" in options and "-DGGML_AVX512=ON" in options
    assert "-DGGML_AVX512_VNNI=ON" in options
    assert "-DGGML_AVX512_BF16=OFF" in options and "-DGGML_AVX_VNNI=OFF" in options
    for off in ("-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF", "-DGGML_NATIVE=OFF"):
        assert off in options
    assert not any("AMX" in o and o.endswith("=ON") for o in options)
    plain = llama_peer.ggml_cmake_options({"sse4_2"})
    assert "-DGGML_SSE42=ON" in plain and "-DGGML_AVX=OFF" in plain


def test_streams_argument_parses_levels_and_rejects_bad_ones() -> None:
    """--streams takes comma-separated levels; text or zero is a usage error naming the value."""
    assert bench_peer.parse_streams("1,8,32") == (1, 8, 32)
    assert bench_peer.parse_streams("4") == (4,)
    for bad in ("one,8", "0,8", ""):
        with pytest.raises(argparse.ArgumentTypeError, match=r"e\.g\. 1,8,32"):
            bench_peer.parse_streams(bad)


def test_command_line_defaults_and_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Defaults are the issue's load (1, 8, 32 streams, 3 rounds, 64 tokens, -np 8); a missing
    --llama-server binary or a zero count exits with a usage error, not a traceback."""
    args = bench_peer.parse_args([])
    assert (args.streams, args.rounds, args.max_tokens, args.parallel) == ((1, 8, 32), 3, 64, 8)
    assert args.llama_cpp_version == llama_peer.PEER_VERSION and args.threads is None
    bad = (
        ["--llama-server", str(tmp_path / "nope")],
        ["--rounds", "0"],
        ["--also-repo", str(tmp_path / "gone")],
        ["--peer-poll", "101"],
    )
    for argv in bad:
        with pytest.raises(SystemExit) as exit_info:
            bench_peer.parse_args(argv)
        assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "nope: no such file" in err and "gone: no such directory" in err


def test_round_figures_and_medians() -> None:
    """tok/s is all completion tokens over the round's wall time; TTFT percentiles are nearest-rank;
    the printed figure is each value's median over rounds."""
    samples = [bench_peer.Sample(t, 64, "") for t in (0.010, 0.020, 0.030, 0.040)]
    fig = bench_peer.round_figures(samples, wall_s=2.0)
    assert fig["tok_s"] == pytest.approx(128.0)
    assert fig["ttft_p50_ms"] == pytest.approx(30.0)  # rank round(0.5 * 3) = 2
    assert fig["ttft_p95_ms"] == pytest.approx(40.0)
    rounds = [
        {"tok_s": 10.0, "ttft_p50_ms": 5.0},
        {"tok_s": 30.0, "ttft_p50_ms": 1.0},
        {"tok_s": 20.0, "ttft_p50_ms": 9.0},
    ]
    assert bench_peer.median_figures(rounds) == {"tok_s": 20.0, "ttft_p50_ms": 5.0}


def test_ratios_compare_tritonform_with_the_peer() -> None:
    """tok/s ratio above 1 means tritonform is faster; TTFT ratio below 1 means it answers sooner."""
    r = bench_peer.ratios({"tok_s": 150.0, "ttft_p50_ms": 10.0}, {"tok_s": 100.0, "ttft_p50_ms": 20.0})
    assert r == {"tok_s": pytest.approx(1.5), "ttft_p50": pytest.approx(0.5)}


def test_bandwidth_ceiling_and_answer_agreement() -> None:
    """The single-stream ceiling is bandwidth / weight bytes per token; agreement is the shared start."""
    assert bench_peer.ceiling_tok_s(16e9, 100_000_000) == pytest.approx(160.0)
    assert bench_peer.common_prefix_fraction("Paris is", "Paris is") == 1.0
    assert bench_peer.common_prefix_fraction("Paris", "Parma") == pytest.approx(3 / 5)
    assert bench_peer.common_prefix_fraction("", "") == 1.0
    assert bench_peer.common_prefix_fraction("ab", "abcd") == pytest.approx(0.5)


def test_onnx_weight_bytes_leave_out_row_lookups(tmp_path: Path) -> None:
    """An engine decode step reads every weight but the embedding table, from which it gathers rows."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    emb = numpy_helper.from_array(np.zeros((100, 8), dtype=np.float32), "emb")
    w = numpy_helper.from_array(np.zeros((8, 4), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[emb, w],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    assert bench_peer.onnx_bytes_per_token(tmp_path / "m.onnx") == 8 * 4 * 4


def test_with_the_cpu_operators_a_projection_reads_its_tiles(tmp_path: Path) -> None:
    """Where tritonform's CPU operators run a 4-bit projection, a step reads its repacked tiles: 16
    columns x one block in 320 bytes when float16 keeps the scales and lows (Q4_1 weights), 384 when
    not; a graph without such projections has no such figure."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from model_repo.quantize_int4 import quantize_int4_with_offsets

    def model(weight: np.ndarray) -> Path:
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 20])],
            initializer=[numpy_helper.from_array(weight.astype(np.float32), "w")],
        )
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        quantize_int4_with_offsets(proto, 4)
        path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.onnx"
        onnx.save(proto, str(path))
        return path

    rng = np.random.default_rng(0)
    q = rng.integers(0, 16, size=(64, 20)).astype(np.float32)
    q[0], q[32], q[1], q[33] = 0, 0, 15, 15  # each block spans 0..15
    d = rng.uniform(0.01, 0.05, size=(2, 1, 20)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.4, 0.1, size=(2, 1, 20)).astype(np.float16).astype(np.float32)
    q4_1 = (q.reshape(2, 32, 20) * d + m).reshape(64, 20)  # on a Q4_1 grid: d and m in float16
    tiles = 2 * 2  # ceil(20 / 16) column groups x 2 blocks
    assert bench_peer.cpu_ops_bytes_per_token(model(q4_1)) == tiles * 320
    assert bench_peer.cpu_ops_bytes_per_token(model(rng.normal(size=(64, 20)))) == tiles * 384
    plain = tmp_path / "plain.onnx"
    graph = helper.make_graph([], "empty", [], [])
    onnx.save(helper.make_model(graph), str(plain))
    assert bench_peer.cpu_ops_bytes_per_token(plain) is None


def test_level_summary_gives_each_server_and_each_ratio_to_the_peer() -> None:
    """A finished level's line names every server's figures and each tritonform server's ratios to
    llama-server, so a run cut short later still leaves its figures in the log."""
    figures = {
        "tritonform": {8: {"tok_s": 150.0, "ttft_p50_ms": 40.0, "ttft_p95_ms": 60.0}},
        "tritonform (new)": {8: {"tok_s": 200.0, "ttft_p50_ms": 20.0, "ttft_p95_ms": 30.0}},
        "llama-server": {8: {"tok_s": 100.0, "ttft_p50_ms": 40.0, "ttft_p95_ms": 50.0}},
    }
    line = bench_peer.level_summary(8, figures, 3.25)
    assert line.startswith("8 stream(s): tritonform 150.0 tok/s, TTFT p50 40 ms")
    assert "tritonform / llama-server: 1.50x tok/s, TTFT 1.00x" in line
    assert "tritonform (new) / llama-server: 2.00x tok/s, TTFT 0.50x" in line
    assert line.endswith("(load 3.2)")


class _Completions:
    def __init__(self) -> None:
        self.fail = False

    async def create(self, **_: object) -> object:
        if self.fail:
            raise ConnectionResetError("reset by peer")
        return _Stream()


class _Stream:
    def __aiter__(self) -> _Stream:
        self.chunks = iter([_chunk("hi", None), _chunk(None, 1)])
        return self

    async def __anext__(self) -> object:
        try:
            return next(self.chunks)
        except StopIteration:
            raise StopAsyncIteration from None


def _chunk(text: str | None, tokens: int | None) -> object:
    from types import SimpleNamespace

    delta = SimpleNamespace(content=text)
    choices = [SimpleNamespace(delta=delta)] if text else []
    usage = SimpleNamespace(completion_tokens=tokens) if tokens else None
    return SimpleNamespace(choices=choices, usage=usage)


def _client() -> object:
    from types import SimpleNamespace

    return SimpleNamespace(chat=SimpleNamespace(completions=_Completions()))


def test_a_server_that_fails_a_request_is_named() -> None:
    """A request that fails during the load stops the run with the failing server's name, the level
    and the round, not only the client library's traceback."""
    import asyncio

    endpoints = [
        bench_peer.Endpoint("tritonform", _client(), "llm"),
        bench_peer.Endpoint("llama-server", _client(), "peer"),  # the agreement answers (warm-up) pass
    ]
    calls: list[str] = []

    def say(message: str) -> None:
        calls.append(message)
        endpoints[1].client.chat.completions.fail = True  # then the peer breaks

    with pytest.raises(SystemExit, match=r"llama-server failed a request \(1 stream\(s\), round 2\)"):
        asyncio.run(bench_peer.measure(endpoints, (1,), 3, 8, say))
    assert calls == ["1 stream(s), round 1/3 done"]
