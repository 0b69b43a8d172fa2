"""Command groups of the `tritonform` CLI; each module registers its commands on the main app.

Heavy libraries (cloud SDKs, torch, onnxruntime) are imported inside the commands, never at import.
"""
