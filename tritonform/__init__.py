"""tritonform: from a Hugging Face checkpoint to a Triton-served, OpenAI-compatible endpoint."""

__version__ = "0.1.0"
