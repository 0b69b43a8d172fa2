"""The Pulumi program of tritonform: settings, one cloud interface, the Kubernetes workload, policies.

`infra/__main__.py` is the program `pulumi up` runs; nothing here creates resources at import.
"""
