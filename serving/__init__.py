"""Serving: a local Triton launcher and (later) the OpenAI-compatible gateway in front of Triton."""
