"""TensorRT-LLM ensemble, step 1 (python backend): text -> token ids, stop words -> TRT-LLM word list.

Written by tritonform (`model_repo.tensorrt_llm`); needs only numpy and `tokenizers`, both present in
NVIDIA's `-trtllm-python-py3` images. Reads `tokenizer.json` and `generation.json` next to this file.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer


def word_list(tokenizer, words):
    """TRT-LLM's [2, N] format: concatenated token ids, then end offsets padded with -1."""
    ids, offsets = [], []
    for word in words:
        tokens = tokenizer.encode(word, add_special_tokens=False).ids
        if tokens:
            ids.extend(tokens)
            offsets.append(len(ids))
    width = max(1, len(ids))
    out = np.full((2, width), -1, dtype=np.int32)
    out[0, :] = 0
    out[0, : len(ids)] = ids
    out[1, : len(offsets)] = offsets
    return out


class TritonPythonModel:
    def initialize(self, args):
        here = Path(__file__).resolve().parent
        self.tokenizer = Tokenizer.from_file(str(here / "tokenizer.json"))
        meta = json.loads((here / "generation.json").read_text())
        self.end_id = int(meta["eos_token_ids"][0])
        self.pad_id = int(meta["pad_token_id"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                query = pb_utils.get_input_tensor_by_name(request, "QUERY").as_numpy()
                stop = pb_utils.get_input_tensor_by_name(request, "STOP_WORDS_DICT")
                end = pb_utils.get_input_tensor_by_name(request, "END_ID")
                rows = [
                    self.tokenizer.encode(q.reshape(-1)[0].decode("utf-8"), add_special_tokens=False).ids
                    for q in query
                ]
                if any(not r for r in rows):
                    raise ValueError("text_input is empty")
                width = max(len(r) for r in rows)
                ids = np.full((len(rows), width), self.pad_id, dtype=np.int32)
                for i, r in enumerate(rows):
                    ids[i, : len(r)] = r
                words = (
                    [[w.decode("utf-8") for w in row.reshape(-1) if w] for row in stop.as_numpy()]
                    if stop
                    else [[] for _ in rows]
                )
                lists = [word_list(self.tokenizer, w) for w in words]
                stop_width = max(x.shape[1] for x in lists)
                stop_ids = np.stack(
                    [np.pad(x, ((0, 0), (0, stop_width - x.shape[1])), constant_values=-1) for x in lists]
                )
                batch = len(rows)
                tensors = [
                    pb_utils.Tensor("INPUT_ID", ids),
                    pb_utils.Tensor("REQUEST_INPUT_LEN", np.array([[len(r)] for r in rows], dtype=np.int32)),
                    pb_utils.Tensor("STOP_WORDS_IDS", stop_ids),
                    pb_utils.Tensor(
                        "OUT_END_ID",
                        # the client's end_id (-1: none, run to max_tokens) or the model's eos
                        end.as_numpy().astype(np.int32).reshape(batch, 1)
                        if end
                        else np.full((batch, 1), self.end_id, dtype=np.int32),
                    ),
                    pb_utils.Tensor("OUT_PAD_ID", np.full((batch, 1), self.pad_id, dtype=np.int32)),
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # a bad request answers with an error, the model keeps serving
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad request: {exc}"))
                )
        return responses
