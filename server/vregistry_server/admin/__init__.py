"""The admin domain: upstreams and registries managed at runtime (ConfigService).

``records`` (the stored resources: the model plus group, version and times),
``manager`` (validated changes, live reload into the resolver), ``checks``
(TestUpstream), ``crypto`` (AES-GCM keyring for credentials at rest),
``callers`` (caller tokens and roles; ``python -m vregistry_server.admin.callers``)
and ``stores/`` (memory, SQLite, Redis). The gRPC face is rpc/config_servicer.py.
"""
