"""The typed spec and the strict config.pbtxt renderer."""

from __future__ import annotations

import hashlib
from dataclasses import fields

import pytest

from model_repo.python_model import model as python_model
from model_repo.spec import (
    GENERATION_INPUTS,
    GENERATION_OUTPUTS,
    PYTHON_MODEL_INPUTS,
    PYTHON_MODEL_OUTPUTS,
    TEMPLATE_DIR,
    DataType,
    GenerationSpec,
    ModelConfig,
    SpecError,
    TemplateError,
    TensorSpec,
    parse_model_config,
    pbtxt_string,
    python_model_config,
    render_model_config,
    render_template,
)


def _values(config: ModelConfig) -> dict[str, object]:
    return {f.name: getattr(config, f.name) for f in fields(config)}


def test_python_model_config_renders_and_parses_with_tritons_schema() -> None:
    spec = GenerationSpec(model_name="smol", max_batch_size=4, instance_count=2, execution_provider="cpu")
    parsed = parse_model_config(render_model_config(python_model_config(spec)))
    assert parsed.name == "smol" and parsed.backend == "python" and parsed.max_batch_size == 4
    assert parsed.model_transaction_policy.decoupled is True
    assert [(i.name, i.optional) for i in parsed.input] == [(t.name, t.optional) for t in PYTHON_MODEL_INPUTS]
    assert PYTHON_MODEL_INPUTS[: len(GENERATION_INPUTS)] == GENERATION_INPUTS
    assert [o.name for o in parsed.output] == [
        "text_output",
        "prompt_tokens",
        "completion_tokens",
        "finish_reason",
        "sequence_index",
        "output_token_ids",
        "output_log_probs",
        "output_top_token_ids",
        "output_top_log_probs",
        "prompt_token_ids",
        "prompt_log_probs",
    ]
    # the model sends exactly the outputs the config declares
    assert [o.name for o in parsed.output] == [t.name for t in PYTHON_MODEL_OUTPUTS]
    assert parsed.instance_group[0].count == 2
    params = {k: v.string_value for k, v in parsed.parameters.items()}
    assert params["max_active_sequences"] == "4" and params["execution_provider"] == "cpu"
    assert params["decode_lanes"] == "0"  # auto: the python model picks 2 lanes on a multi-core CPU
    assert params["max_queued_requests"] == "16"  # 4 x max_batch_size unless set
    # onnxruntime's threads spin inside a run only (issue 16: a lone stream's step stops waiting for a
    # sleeping thread at every operator; nothing spins between steps)
    assert (params["allow_spinning"], params["spin_only_in_runs"]) == ("true", "true")


def test_tensor_names_follow_the_tensorrt_llm_ensemble() -> None:
    types = {t.name: t.data_type for t in (*GENERATION_INPUTS, *GENERATION_OUTPUTS)}
    assert types["text_input"] is DataType.STRING and types["max_tokens"] is DataType.INT32
    assert types["text_output"] is DataType.STRING and types["stream"] is DataType.BOOL
    assert types["random_seed"] is DataType.UINT64 and types["stop_words"] is DataType.STRING
    # the python model reads exactly the inputs the config declares
    assert tuple(t.name for t in PYTHON_MODEL_INPUTS) == python_model._INPUT_NAMES
    # issue 15's inputs and outputs carry TensorRT-LLM's names and types where it has them
    extra = {t.name: t.data_type for t in (*PYTHON_MODEL_INPUTS, *PYTHON_MODEL_OUTPUTS)}
    assert extra["return_log_probs"] is DataType.BOOL and extra["num_return_sequences"] is DataType.INT32
    assert (
        extra["guided_decoding_guide_type"] is DataType.STRING and extra["output_log_probs"] is DataType.FP32
    )
    assert extra["sequence_index"] is DataType.INT32 and extra["logit_bias_values"] is DataType.FP32


def test_missing_placeholder_is_an_error() -> None:
    values = _values(python_model_config(GenerationSpec()))
    del values["outputs"]
    with pytest.raises(TemplateError, match=r"missing values \['outputs'\]"):
        render_template("config.pbtxt.j2", values)


def test_unused_value_is_an_error() -> None:
    values = _values(python_model_config(GenerationSpec()))
    values["max_queue_delay"] = 5
    with pytest.raises(TemplateError, match=r"unused values \['max_queue_delay'\]"):
        render_template("config.pbtxt.j2", values)


def test_unknown_template_and_missing_attribute_are_errors() -> None:
    with pytest.raises(TemplateError, match="no template"):
        render_template("nope.j2", {})
    values = _values(python_model_config(GenerationSpec()))
    values["inputs"] = ("not a tensor",)
    with pytest.raises(TemplateError):
        render_template("config.pbtxt.j2", values)


def test_rendering_never_edits_templates() -> None:
    before = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in TEMPLATE_DIR.rglob("*") if p.is_file()
    }
    render_model_config(python_model_config(GenerationSpec()))
    after = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in TEMPLATE_DIR.rglob("*") if p.is_file()
    }
    assert before == after


def test_string_values_are_escaped() -> None:
    assert pbtxt_string('a"b\\c') == '"a\\"b\\\\c"'
    with pytest.raises(TemplateError, match="line breaks"):
        pbtxt_string("two\nlines")
    spec = GenerationSpec(extra_parameters=(("note", 'say "hi" \\ bye'),))
    parsed = parse_model_config(render_model_config(python_model_config(spec)))
    assert parsed.parameters["note"].string_value == 'say "hi" \\ bye'


def test_parse_rejects_unknown_fields() -> None:
    with pytest.raises(SpecError, match="does not parse"):
        parse_model_config('name: "x"\nmax_batch_sise: 3\n')


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: GenerationSpec(model_name="has space"), "model_name"),
        (lambda: GenerationSpec(max_batch_size=0), "max_batch_size"),
        (lambda: GenerationSpec(instance_count=0), "instance_count"),
        (lambda: GenerationSpec(decode_lanes=-1), "decode_lanes"),
        (lambda: GenerationSpec(engine_subdir="a/b"), "engine_subdir"),
        (lambda: GenerationSpec(extra_parameters=(("engine_subdir", "x"),)).parameters(), "override"),
        (lambda: TensorSpec("bad-name", DataType.INT32, (1,)), "tensor name"),
        (lambda: TensorSpec("x", DataType.INT32, (0,)), "dims"),
        (
            lambda: ModelConfig("m", 0, GENERATION_INPUTS, GENERATION_INPUTS[:1], backend="python"),
            "duplicate",
        ),
        (lambda: ModelConfig("m", 0, (), (), backend="python", platform="ensemble"), "exactly one"),
        (lambda: ModelConfig("m", 0, (), (), platform="ensemble"), "at least one step"),
    ],
)
def test_bad_specs_name_the_field(make: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        make()  # type: ignore[operator]
