"""The admin side: upstreams and registries managed at runtime (ConfigService).

One module per concern: ``records`` (the stored resources and their rules),
``crypto`` (AES-GCM keyring for credentials at rest), ``store`` and
``sqlite_store`` / ``redis_store`` (persistence and change notification),
``manager`` (validated changes, live reload into the resolver), ``checks``
(TestUpstream), ``servicer`` (the gRPC face), ``callers`` (bearer tokens and
roles), ``tls`` (server credentials) and ``setup`` (flags and wiring).
"""
