// The seed's flow through the installed @vregistry/client: two upstreams, a registry, the
// upstreams at positions 1 and 2 (ConfigService), then ResolveUpstream (UpstreamService).
// Input: the JSON file in argv[2] (tests/support/consumers.py describes it). Output: one JSON
// line on stdout. tsc (strict) type-checks every use of the package's published declarations.
import { readFileSync } from "node:fs";

import {
  attemptOutcomeToJSON,
  type TlsOptions,
  upstreamName,
  VRegistryClient,
  VRegistryError,
} from "@vregistry/client";

interface UpstreamInput {
  id: string;
  display_name: string;
  url: string;
  allow_http: boolean;
  realm_allow_hosts: string[];
  username: string;
  password: string;
}

interface Input {
  target: string;
  token: string | null;
  tls: { ca: string; cert: string | null; key: string | null } | null;
  group: string;
  upstreams: [UpstreamInput, UpstreamInput];
  registry_id: string;
  path: string;
}

function tlsOptions(tls: Input["tls"]): boolean | TlsOptions {
  if (tls === null) {
    return false;
  }
  return {
    rootCerts: readFileSync(tls.ca),
    certChain: tls.cert ? readFileSync(tls.cert) : undefined,
    privateKey: tls.key ? readFileSync(tls.key) : undefined,
  };
}

async function main(): Promise<void> {
  const input = JSON.parse(readFileSync(process.argv[2] ?? "", "utf8")) as Input;
  const client = new VRegistryClient({
    target: input.target,
    tls: tlsOptions(input.tls),
    callerToken: input.token ?? undefined,
  });
  try {
    for (const upstream of input.upstreams) {
      await client.config.createUpstream({
        parent: input.group,
        upstreamId: upstream.id,
        upstream: {
          displayName: upstream.display_name,
          url: upstream.url,
          allowHttp: upstream.allow_http,
          realmAllowHosts: upstream.realm_allow_hosts,
          username: upstream.username,
          password: upstream.password,
        },
      });
    }
    const registry = await client.config.createRegistry({
      parent: input.group,
      registryId: input.registry_id,
      registry: { displayName: `Registry ${input.registry_id}` },
    });
    let etag = registry.etag;
    for (const [index, upstream] of input.upstreams.entries()) {
      // Each write is conditional on the etag of the one before.
      const changed = await client.config.addUpstream({
        registry: registry.name,
        upstream: upstreamName(input.group, upstream.id),
        position: index + 1,
        etag,
      });
      etag = changed.etag;
    }
    const hit = await client.resolveUpstream({ registryId: input.registry_id, path: input.path });
    const answer = {
      upstream_id: hit.upstream?.id,
      position: hit.upstream?.position,
      url: hit.url,
      digest: hit.digest,
      media_type: hit.mediaType,
      size: hit.size,
      outcomes: hit.attempts.map((a) => [a.upstreamId, attemptOutcomeToJSON(a.outcome)]),
    };
    process.stdout.write(`${JSON.stringify(answer)}\n`);
  } finally {
    client.close();
  }
}

main().catch((error: unknown) => {
  const text = error instanceof VRegistryError ? `${error.message} attempts=${JSON.stringify(error.attempts)}` : String(error);
  process.stderr.write(`consumer failed: ${text}\n`);
  process.exit(1);
});
