// ConfigClient and the channel settings against in-process @grpc/grpc-js servers standing in
// for vregistry: paging, update masks, etags, caller tokens, the retry policy and round-robin
// of the default service config. The real server's ConfigService is exercised by the consumer
// project (tests/consumers/typescript, run by tests/system/test_client_consumers.py).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import {
  type sendUnaryData,
  Server,
  type ServerUnaryCall,
  ServerCredentials,
  Metadata,
  status,
  type UntypedServiceImplementation,
} from "@grpc/grpc-js";

import {
  ConfigClient,
  configService,
  DEFAULT_SERVICE_CONFIG,
  ErrorInfo,
  ErrorReason,
  errorReasonToJSON,
  fieldMask,
  groupName,
  registryName,
  Status,
  upstreamName,
  UpstreamServiceService,
  VRegistryClient,
  VRegistryError,
} from "../src/index";

const { ConfigServiceService, UpstreamConfig, RegistryConfig } = configService;
type Call<Req> = ServerUnaryCall<Req, unknown>;
type Reply = sendUnaryData<unknown>;

function errorTrailer(code: number, message: string, reason: string): Metadata {
  const info = ErrorInfo.encode({ reason, domain: "vregistry.dev", metadata: {} }).finish();
  const details = [{ typeUrl: "type.googleapis.com/google.rpc.ErrorInfo", value: Buffer.from(info) }];
  const metadata = new Metadata();
  metadata.set("grpc-status-details-bin", Buffer.from(Status.encode({ code, message, details }).finish()));
  return metadata;
}

async function listen(server: Server): Promise<number> {
  return new Promise((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, port) =>
      error ? reject(error) : resolve(port),
    ),
  );
}

async function rejection(promise: Promise<unknown>): Promise<VRegistryError> {
  const error = await promise.then(
    () => assert.fail("the call succeeded but an error was expected"),
    (e: unknown) => e,
  );
  assert.ok(error instanceof VRegistryError, `expected a VRegistryError, got ${String(error)}`);
  return error;
}

const authorization = (call: Call<unknown>): string => String(call.metadata.get("authorization")[0] ?? "");

/** A stand-in ConfigService: seven upstreams ("u0".."u6"), pages of `pageSize` (default 3). */
function standIn(seen: { requests: unknown[]; tokens: string[] }): UntypedServiceImplementation {
  const ids = Array.from({ length: 7 }, (_, i) => `u${i}`);
  const record = (call: Call<unknown>) => {
    seen.requests.push(call.request);
    seen.tokens.push(authorization(call));
  };
  return {
    createUpstream(call: Call<configService.CreateUpstreamRequest>, callback: Reply) {
      record(call);
      const { parent, upstreamId, upstream } = call.request;
      if (upstreamId === "taken") {
        callback({
          code: status.ALREADY_EXISTS,
          details: "exists",
          metadata: errorTrailer(status.ALREADY_EXISTS, "exists", errorReasonToJSON(ErrorReason.ALREADY_EXISTS)),
        });
        return;
      }
      callback(null, {
        upstream: UpstreamConfig.fromPartial({ ...upstream, name: `${parent}/upstreams/${upstreamId}`, etag: '"e1"' }),
      });
    },
    getUpstream(call: Call<configService.GetUpstreamRequest>, callback: Reply) {
      record(call);
      callback(null, { upstream: UpstreamConfig.fromPartial({ name: call.request.name, etag: '"e1"' }) });
    },
    listUpstreams(call: Call<configService.ListUpstreamsRequest>, callback: Reply) {
      record(call);
      const size = call.request.pageSize || 3;
      const start = call.request.pageToken ? Number(call.request.pageToken) : 0;
      const upstreams = ids.slice(start, start + size).map((id) => UpstreamConfig.fromPartial({ name: `g/${id}` }));
      const next = start + size < ids.length ? String(start + size) : "";
      callback(null, { upstreams, nextPageToken: next });
    },
    updateUpstream(call: Call<configService.UpdateUpstreamRequest>, callback: Reply) {
      record(call);
      const upstream = call.request.upstream;
      if (upstream?.etag && upstream.etag !== '"e1"') {
        callback({
          code: status.ABORTED,
          details: "stale etag",
          metadata: errorTrailer(status.ABORTED, "stale etag", errorReasonToJSON(ErrorReason.ETAG_MISMATCH)),
        });
        return;
      }
      callback(null, { upstream: UpstreamConfig.fromPartial({ ...upstream, etag: '"e2"' }) });
    },
    deleteUpstream(call: Call<configService.DeleteUpstreamRequest>, callback: Reply) {
      record(call);
      callback(null, { removedFrom: call.request.force ? ["groups/g/registries/r"] : [] });
    },
    testUpstream(call: Call<configService.TestUpstreamRequest>, callback: Reply) {
      record(call);
      callback(null, { ok: call.request.name !== undefined, steps: [], scheme: "none" });
    },
    createRegistry(call: Call<configService.CreateRegistryRequest>, callback: Reply) {
      record(call);
      const { parent, registryId, registry } = call.request;
      callback(null, { registry: RegistryConfig.fromPartial({ ...registry, name: `${parent}/registries/${registryId}` }) });
    },
    getRegistry(call: Call<configService.GetRegistryRequest>, callback: Reply) {
      record(call);
      callback(null, { registry: RegistryConfig.fromPartial({ name: call.request.name }) });
    },
    listRegistries(call: Call<configService.ListRegistriesRequest>, callback: Reply) {
      record(call);
      // A server that keeps answering with the same token: the client must not loop forever.
      callback(null, { registries: [RegistryConfig.fromPartial({ name: "r" })], nextPageToken: "again" });
    },
    updateRegistry(call: Call<configService.UpdateRegistryRequest>, callback: Reply) {
      record(call);
      callback(null, { registry: RegistryConfig.fromPartial({ ...call.request.registry }) });
    },
    deleteRegistry(call: Call<configService.DeleteRegistryRequest>, callback: Reply) {
      record(call);
      callback(null, {});
    },
    addUpstream(call: Call<configService.AddUpstreamRequest>, callback: Reply) {
      record(call);
      const { registry, upstream, position } = call.request;
      callback(null, { registry: RegistryConfig.fromPartial({ name: registry, upstreams: [{ upstream, position }] }) });
    },
    removeUpstream(call: Call<configService.RemoveUpstreamRequest>, callback: Reply) {
      record(call);
      callback(null, { registry: RegistryConfig.fromPartial({ name: call.request.registry }) });
    },
    reorderUpstreams(call: Call<configService.ReorderUpstreamsRequest>, callback: Reply) {
      record(call);
      const { registry, upstreams } = call.request;
      callback(null, { registry: RegistryConfig.fromPartial({ name: registry, upstreams }) });
    },
  };
}

describe("ConfigClient against a stand-in ConfigService", () => {
  const server = new Server();
  const seen = { requests: [] as unknown[], tokens: [] as string[] };
  let client: VRegistryClient;
  let config: ConfigClient;
  let target = "";

  before(async () => {
    server.addService(ConfigServiceService, standIn(seen));
    target = `127.0.0.1:${await listen(server)}`;
    client = new VRegistryClient({ target, tls: false, callerToken: "admin-token" });
    config = client.config;
  });

  after(() => {
    client.close();
    server.forceShutdown();
  });

  const last = <T>(): T => seen.requests.at(-1) as T;

  it("builds resource names and masks from plain names", () => {
    assert.equal(groupName("acme"), "groups/acme");
    assert.equal(groupName("groups/acme"), "groups/acme");
    assert.equal(upstreamName("acme", "hub"), "groups/acme/upstreams/hub");
    assert.equal(registryName("groups/acme", "r"), "groups/acme/registries/r");
    assert.deepEqual(fieldMask(["displayName", "realm_allow_hosts", "cacheValidityHours", "*"]), [
      "display_name",
      "realm_allow_hosts",
      "cache_validity_hours",
      "*",
    ]);
  });

  it("creates an upstream in a group given by id, with the client's caller token", async () => {
    const upstream = await config.createUpstream({
      parent: "acme",
      upstreamId: "hub",
      upstream: { displayName: "Hub", url: "https://registry.test", cacheValidityHours: 0 },
    });
    assert.equal(upstream.name, "groups/acme/upstreams/hub");
    assert.equal(upstream.etag, '"e1"');
    // An explicit 0 of the optional field reaches the server (not dropped as a default).
    assert.equal(last<configService.CreateUpstreamRequest>().upstream?.cacheValidityHours, 0);
    assert.equal(seen.tokens.at(-1), "Bearer admin-token");
  });

  it("lets one call use another caller token, or none", async () => {
    await config.getUpstream("groups/acme/upstreams/hub", { callerToken: "other" });
    assert.equal(seen.tokens.at(-1), "Bearer other");
    await config.getUpstream("groups/acme/upstreams/hub", { callerToken: "" });
    assert.equal(seen.tokens.at(-1), "");
  });

  it("lists every page as an async iterator", async () => {
    const before = seen.requests.length;
    const names: string[] = [];
    for await (const upstream of config.listUpstreams({ parent: "-", pageSize: 3 })) {
      names.push(upstream.name);
    }
    assert.deepEqual(names, ["g/u0", "g/u1", "g/u2", "g/u3", "g/u4", "g/u5", "g/u6"]);
    const requests = seen.requests.slice(before) as configService.ListUpstreamsRequest[];
    assert.deepEqual(
      requests.map((r) => [r.parent, r.pageSize, r.pageToken]),
      [
        ["groups/-", 3, ""],
        ["groups/-", 3, "3"],
        ["groups/-", 3, "6"],
      ],
    );
    const page = await config.listUpstreamsPage({ parent: "acme", pageSize: 2 });
    assert.equal(page.upstreams.length, 2);
    assert.equal(page.nextPageToken, "2");
  });

  it("stops a listing whose server repeats its page token", async () => {
    const names: string[] = [];
    await assert.rejects(async () => {
      for await (const registry of config.listRegistries({ parent: "acme" })) {
        names.push(registry.name);
      }
    }, /repeated page token/);
    assert.deepEqual(names, ["r"]);
  });

  it("updates with a mask of plain field names and passes the etag through", async () => {
    const updated = await config.updateUpstream({
      upstream: { name: "groups/acme/upstreams/hub", etag: '"e1"', displayName: "New" },
      updateMask: ["displayName", "realmAllowHosts"],
    });
    assert.equal(updated.etag, '"e2"');
    const sent = last<configService.UpdateUpstreamRequest>();
    assert.deepEqual(sent.updateMask, ["display_name", "realm_allow_hosts"]);
    assert.equal(sent.upstream?.etag, '"e1"');
  });

  it("gives a stale etag as ABORTED / ETAG_MISMATCH", async () => {
    const error = await rejection(
      config.updateUpstream({ upstream: { name: "groups/acme/upstreams/hub", etag: '"old"' } }),
    );
    assert.equal(error.codeName, "ABORTED");
    assert.equal(error.reasonCode, ErrorReason.ETAG_MISMATCH);
    assert.equal(last<configService.UpdateUpstreamRequest>().updateMask, undefined);
  });

  it("gives a duplicate id as ALREADY_EXISTS", async () => {
    const error = await rejection(config.createUpstream({ parent: "acme", upstreamId: "taken", upstream: {} }));
    assert.equal(error.reasonCode, ErrorReason.ALREADY_EXISTS);
  });

  it("covers the other RPCs", async () => {
    assert.deepEqual(await config.deleteUpstream({ name: "groups/g/upstreams/u", force: true, etag: '"e"' }), [
      "groups/g/registries/r",
    ]);
    assert.deepEqual(
      [last<configService.DeleteUpstreamRequest>().etag, last<configService.DeleteUpstreamRequest>().force],
      ['"e"', true],
    );
    assert.equal((await config.testUpstream({ name: "groups/g/upstreams/u", path: "a/manifests/1" })).ok, true);
    assert.equal((await config.testUpstream({ upstream: { url: "https://x.test" } })).ok, false);
    const registry = await config.createRegistry({ parent: "g", registryId: "r", registry: { displayName: "R" } });
    assert.equal(registry.name, "groups/g/registries/r");
    assert.equal((await config.getRegistry("groups/g/registries/r")).name, "groups/g/registries/r");
    await config.updateRegistry({ registry: { name: registry.name, description: "d" }, updateMask: ["description"] });
    assert.deepEqual(last<configService.UpdateRegistryRequest>().updateMask, ["description"]);
    const added = await config.addUpstream({ registry: registry.name, upstream: "groups/g/upstreams/u", position: 1 });
    assert.deepEqual(added.upstreams, [{ upstream: "groups/g/upstreams/u", position: 1 }]);
    await config.removeUpstream({ registry: registry.name, upstream: "groups/g/upstreams/u", etag: '"x"' });
    assert.equal(last<configService.RemoveUpstreamRequest>().etag, '"x"');
    const reordered = await config.reorderUpstreams({ registry: registry.name, order: ["groups/g/upstreams/b", "groups/g/upstreams/a"] });
    assert.deepEqual(reordered.upstreams, [
      { upstream: "groups/g/upstreams/b", position: 1 },
      { upstream: "groups/g/upstreams/a", position: 2 },
    ]);
    await config.deleteRegistry({ name: registry.name, etag: '"y"' });
    assert.equal(last<configService.DeleteRegistryRequest>().etag, '"y"');
  });

  it("can be built on its own channel", async () => {
    const own = new ConfigClient({ target, tls: false });
    try {
      assert.equal((await own.getUpstream("groups/g/upstreams/u")).name, "groups/g/upstreams/u");
      assert.equal(seen.tokens.at(-1), "");
    } finally {
      own.close();
    }
  });
});

describe("the default service config", () => {
  it("is the standard JSON: round_robin and UNAVAILABLE retried", () => {
    assert.deepEqual(DEFAULT_SERVICE_CONFIG.loadBalancingConfig, [{ round_robin: {} }]);
    const policy = DEFAULT_SERVICE_CONFIG.methodConfig[0].retryPolicy;
    assert.deepEqual(policy.retryableStatusCodes, ["UNAVAILABLE"]);
    assert.equal(policy.maxAttempts, 3);
  });

  // A server that answers UNAVAILABLE twice and then succeeds; with the retry policy the call
  // succeeds on its third attempt, without it the first UNAVAILABLE is the answer.
  async function flaky(): Promise<{ server: Server; target: string; attempts: () => number }> {
    let attempts = 0;
    const server = new Server();
    server.addService(UpstreamServiceService, {
      urlFor(call: Call<unknown>, callback: Reply) {
        attempts += 1;
        if (attempts % 3 !== 0) {
          callback({ code: status.UNAVAILABLE, details: "pod going away" });
          return;
        }
        callback(null, { url: `attempt ${attempts}` });
      },
      getAuthHeaders: () => undefined,
      resolveUpstream: () => undefined,
    });
    const target = `127.0.0.1:${await listen(server)}`;
    return { server, target, attempts: () => attempts };
  }

  it("retries UNAVAILABLE", async () => {
    const { server, target, attempts } = await flaky();
    const client = new VRegistryClient({ target, tls: false });
    try {
      assert.equal((await client.urlFor({ upstreamId: "u", path: "p" })).url, "attempt 3");
      assert.equal(attempts(), 3);
    } finally {
      client.close();
      server.forceShutdown();
    }
  });

  it("is replaced by serviceConfig: null (no retries)", async () => {
    const { server, target, attempts } = await flaky();
    const client = new VRegistryClient({ target, tls: false, serviceConfig: null });
    try {
      const error = await rejection(client.urlFor({ upstreamId: "u", path: "p" }));
      assert.equal(error.codeName, "UNAVAILABLE");
      assert.equal(attempts(), 1);
    } finally {
      client.close();
      server.forceShutdown();
    }
  });

  it("spreads calls over every address of the target (round_robin)", async () => {
    const servers: Server[] = [];
    const hits: string[] = [];
    const ports: number[] = [];
    for (const label of ["a", "b"]) {
      const server = new Server();
      server.addService(UpstreamServiceService, {
        urlFor(_call: Call<unknown>, callback: Reply) {
          hits.push(label);
          callback(null, { url: label });
        },
        getAuthHeaders: () => undefined,
        resolveUpstream: () => undefined,
      });
      ports.push(await listen(server));
      servers.push(server);
    }
    // The ipv4: scheme lists two addresses as a DNS name with two A records would give them.
    const client = new VRegistryClient({ target: `ipv4:127.0.0.1:${ports[0]},127.0.0.1:${ports[1]}`, tls: false });
    try {
      await client.waitForReady(10_000);
      for (let i = 0; i < 6; i += 1) {
        await client.urlFor({ upstreamId: "u", path: "p" });
      }
      assert.deepEqual(new Set(hits), new Set(["a", "b"]), `calls went to ${hits.join(",")}`);
    } finally {
      client.close();
      for (const server of servers) {
        server.forceShutdown();
      }
    }
  });

  it("accepts a dns:/// target", async () => {
    const server = new Server();
    server.addService(UpstreamServiceService, {
      urlFor(_call: Call<unknown>, callback: Reply) {
        callback(null, { url: "via dns" });
      },
      getAuthHeaders: () => undefined,
      resolveUpstream: () => undefined,
    });
    const port = await listen(server);
    // localhost comes from /etc/hosts: no query leaves the machine.
    const client = new VRegistryClient({ target: `dns:///localhost:${port}`, tls: false });
    try {
      assert.equal((await client.urlFor({ upstreamId: "u", path: "p" })).url, "via dns");
    } finally {
      client.close();
      server.forceShutdown();
    }
  });
});
