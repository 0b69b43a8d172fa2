"""Before the checkpoint: fine-tune, prune, distil and evaluate a causal LM (issue 17).

Each step reads and writes a Hugging Face checkpoint directory, so its output goes to `tritonform build`
as is. The heavy libraries (torch, transformers, PEFT, TRL) are imported inside the functions that use
them: importing this package is cheap and has no side effects.
"""
