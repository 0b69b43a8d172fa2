"""tritonform: from a Hugging Face checkpoint to a Triton-served, OpenAI-compatible endpoint."""

from importlib.metadata import version

__version__ = version("tritonform")  # written once, in pyproject.toml
