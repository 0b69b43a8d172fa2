"""TensorRT-LLM ensemble, last step (python backend): token ids -> text.

Written by tritonform (`model_repo.tensorrt_llm`). With `exclude_input_in_output` the engine returns
only new tokens; in streaming mode each response carries the tokens of that step.
"""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer


class TritonPythonModel:
    def initialize(self, args):
        self.tokenizer = Tokenizer.from_file(str(Path(__file__).resolve().parent / "tokenizer.json"))

    def execute(self, requests):
        responses = []
        for request in requests:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
            lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
            texts = [
                [
                    self.tokenizer.decode(beam[: int(n)].tolist(), skip_special_tokens=True).encode("utf-8")
                    for beam, n in zip(row, row_lengths, strict=True)
                ]
                for row, row_lengths in zip(tokens, lengths, strict=True)
            ]
            out = pb_utils.Tensor("OUTPUT", np.array(texts, dtype=np.object_))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
