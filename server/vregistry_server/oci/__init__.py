"""The registry protocol layer: everything that talks HTTP to container registries.

It knows the OCI distribution and Docker token specs and nothing of gRPC,
Prometheus or the admin API (``make lint`` checks this with import-linter); it
reports what it does through the small ``observer.Observer`` interface, which
the runtime wires to Prometheus. One concern a module, as in
go-containerregistry's ``pkg/v1/remote/transport``:

``paths``         the request path grammar (``<name>/manifests/<ref>`` …) and scopes
``challenge``     RFC 7235 ``WWW-Authenticate`` parsing
``http``          the shared client: capped bodies, redirects by hand, time budgets
``realm_policy``  which token realms may receive credentials, checked at connect time
``ping``          auth discovery: ``GET /v2/`` and its challenge
``basic``         the Basic ``Authorization`` value
``token_exchange`` credentials for a bearer token (Docker GET and OAuth2 POST flows)
``token_cache``   tokens in process memory or Redis (encrypted, degraded on outage)
``singleflight``  concurrent misses for one key share one fetch
``auth``          the authenticator: discovery, scheme, token cache, single-flight
``probe``         the prober: which upstream, in position order, has a path
``circuit``       a breaker per upstream
``observer``      the events this layer reports (metrics live elsewhere)
"""
