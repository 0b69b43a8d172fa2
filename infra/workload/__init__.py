"""The Kubernetes workload: the same code on every cloud, on the cluster's own provider.

- `inference.py`: `InferenceWorkload`, the component the program deploys (namespace, policies, both servers).
- `triton.py`, `gateway.py`, `monitoring.py`: its parts; `images.py`: the images the stack builds and pushes.

Importing this package creates nothing and imports nothing heavy: each module is imported where it is used.
"""
