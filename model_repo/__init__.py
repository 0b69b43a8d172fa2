"""From a checkpoint to a Triton model repository: fetch, export, quantise, gate, lay out, upload.

Heavy libraries (torch, transformers, onnxruntime) are imported inside the functions that need them.
"""
