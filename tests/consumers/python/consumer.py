"""The seed's flow through the installed vregistry-client, from outside the repository: two
upstreams, a registry, the upstreams at positions 1 and 2 (ConfigService), then
ResolveUpstream (UpstreamService). Input: the JSON file in argv[1]
(tests/support/consumers.py describes it). Output: one JSON line on stdout."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from vregistry_client import (
    AttemptOutcome,
    RegistryConfig,
    UpstreamConfig,
    VRegistryClient,
    tls_credentials,
    upstream_name,
)


def client_for(document: dict[str, Any]) -> VRegistryClient:
    tls = document["tls"]
    if tls is None:
        return VRegistryClient(document["target"], insecure=True, token=document["token"])
    credentials = tls_credentials(tls["ca"], tls["cert"], tls["key"])
    return VRegistryClient(document["target"], credentials=credentials, token=document["token"])


async def main(document: dict[str, Any]) -> dict[str, Any]:
    group = document["group"]
    async with client_for(document) as client:
        for entry in document["upstreams"]:
            upstream = UpstreamConfig(
                display_name=entry["display_name"],
                url=entry["url"],
                allow_http=entry["allow_http"],
                realm_allow_hosts=entry["realm_allow_hosts"],
                username=entry["username"],
                password=entry["password"],
            )
            await client.config.create_upstream(group, entry["id"], upstream)
        registry_id = document["registry_id"]
        registry = await client.config.create_registry(
            group, registry_id, RegistryConfig(display_name=f"Registry {registry_id}")
        )
        for position, entry in enumerate(document["upstreams"], start=1):
            # Each write is conditional on the etag of the one before.
            registry = await client.config.add_upstream(
                registry.name, upstream_name(group, entry["id"]), position, etag=registry.etag
            )
        hit = await client.resolve_upstream(registry_id, document["path"])
    return {
        "upstream_id": hit.upstream.id,
        "position": hit.upstream.position,
        "url": hit.url,
        "digest": hit.digest,
        "media_type": hit.media_type,
        "size": hit.size,
        "outcomes": [[a.upstream_id, AttemptOutcome.Name(a.outcome)] for a in hit.attempts],
    }


if __name__ == "__main__":
    answer = asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
    print(json.dumps(answer))
