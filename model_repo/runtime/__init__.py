"""What every model repository ships and Triton imports: the generation runtime.

`model_repo.layout` copies this folder into each repository as `<model>/1/tritonform_runtime/`, next to
the Triton adapter `model.py`; in the source tree it is `model_repo.runtime`. Its modules import each
other relatively and import nothing beyond numpy, onnxruntime, tokenizers and the standard library, so
the same files work in both places and in any Triton container that has those libraries, plus llguidance
for constrained decoding (imported only when a request carries a guide) and onnx for the CPU operators'
graph rewrite (imported only on the CPU provider with their library named).

    contract   the model directory's files and ONNX names, `GenerationMetadata`, `EngineError`
    cpus       CPUs this process may use (affinity mask, cgroup quota): the default thread count
    sampling   `SamplingParams`, `Sampler` (temperature, top-k, min-p, top-p, the grammar's mask)
    logits     logit_bias and penalties over a batch (`apply_processors`), logprobs
    guide      constrained decoding with llguidance: `GuideCompiler`, `Guide` (one per sequence)
    batch      continuous batching: `DecodeBatch`, `LeftPaddedBatch`, `RightPaddedBatch`, `StepOutput`
    engine     `Engine`: one onnxruntime session, its tokenizer and metadata
    q4_fusion  tritonform's CPU operator in place of the 4-bit projections' nodes, at load (`CpuOps`);
               its C source is kernels/q4_offset_matmul.c, built by model_repo/cpu_ops.py
    text       `IncrementalDetokenizer`, `TextStream`
    request    `GenerationRequest`, `Response`, `Job`, `JobError`, `SequenceOutput` (tokens -> responses)
    scheduler  `ContinuousBatchScheduler`, `Lane` (re-exports request.py's names),
               `SchedulerCounts` (no Triton types)

This file imports none of them on purpose: serving imports `contract` alone (file names and metadata)
without loading the engine, and the gateway image carries only that module.
"""
