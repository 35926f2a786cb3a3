"""The process: command line, server assembly, workers, logs, metrics, tracing, TLS, health check.

``main`` is the ``vregistry-server`` entry point; ``admin_setup`` wires the admin
API (stores, keyring, callers, TLS) into the server; ``metrics`` turns the OCI
layer's observer events into Prometheus series.
"""
