"""The gRPC faces: protobuf in, plain Python calls, protobuf or a google.rpc.Status out.

``upstream_servicer`` (UpstreamService) and ``config_servicer`` (ConfigService)
are thin mappings; every RPC of both goes through ``boundary.handle`` (logs,
metrics, error mapping); ``status`` builds the rich status, ``interceptors`` holds
the caller authentication. This is the only layer, besides the runtime that
registers them, that imports the generated stubs.
"""
