"""vregistry_server: gRPC service that resolves container-registry upstreams."""
