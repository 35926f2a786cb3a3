// Offline tests: an in-process @grpc/grpc-js server stands in for vregistry, so the
// wrapper's deadlines, metadata, credentials and error decoding are checked without
// the Python server. The live contract is in live.test.ts.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import {
  type sendUnaryData,
  Server,
  type ServerUnaryCall,
  ServerCredentials,
  Metadata,
  status,
} from "@grpc/grpc-js";

import {
  AttemptOutcome,
  attemptOutcomeToJSON,
  DEFAULT_DEADLINE_MS,
  decodeStatusDetails,
  ErrorInfo,
  ErrorReason,
  errorReasonToJSON,
  ResolveUpstreamFailure,
  Status,
  type GetAuthHeadersRequest,
  type GetAuthHeadersResponse,
  type ResolveUpstreamRequest,
  type ResolveUpstreamResponse,
  type UrlForRequest,
  type UrlForResponse,
  UpstreamServiceService,
  VRegistryClient,
  VRegistryError,
} from "../src/index";

function statusTrailer(
  code: number,
  message: string,
  reason: string,
  failure?: ResolveUpstreamFailure,
  domain = "vregistry.dev",
): Metadata {
  const details = [
    {
      typeUrl: "type.googleapis.com/google.rpc.ErrorInfo",
      value: Buffer.from(ErrorInfo.encode({ reason, domain, metadata: { registry_id: "r" } }).finish()),
    },
  ];
  if (failure) {
    details.push({
      typeUrl: "type.googleapis.com/vregistry.v1.ResolveUpstreamFailure",
      value: Buffer.from(ResolveUpstreamFailure.encode(failure).finish()),
    });
  }
  const metadata = new Metadata();
  metadata.set("grpc-status-details-bin", Buffer.from(Status.encode({ code, message, details }).finish()));
  return metadata;
}

const attempt = (upstreamId: string, position: number, outcome: AttemptOutcome) => ({
  upstreamId,
  outcome,
  httpStatus: 404,
  latencyMs: 1.5,
  position,
  message: "",
  retryAfterSeconds: 0,
  reason: "",
});

describe("VRegistryClient against a stand-in server", () => {
  const server = new Server();
  let client: VRegistryClient;
  let boundPort = 0;

  before(async () => {
    server.addService(UpstreamServiceService, {
      urlFor(call: ServerUnaryCall<UrlForRequest, UrlForResponse>, callback: sendUnaryData<UrlForResponse>) {
        if (call.request.upstreamId === "deadline") {
          // Echo how many milliseconds the call's deadline leaves ("Infinity": none). A grpc-js
          // Deadline is a Date or an epoch-milliseconds number (Infinity without a deadline).
          const deadline = call.getDeadline();
          const left = (deadline instanceof Date ? deadline.getTime() : deadline) - Date.now();
          callback(null, { url: String(left) });
          return;
        }
        const who = call.metadata.get("x-caller")[0] ?? "";
        callback(null, { url: `http://upstream.test/v2/${call.request.path}#${call.request.upstreamId}${who}` });
      },
      getAuthHeaders(
        call: ServerUnaryCall<GetAuthHeadersRequest, GetAuthHeadersResponse>,
        callback: sendUnaryData<GetAuthHeadersResponse>,
      ) {
        const reply = () =>
          callback(null, {
            headers: { Authorization: "Bearer t0k3n" },
            expiresAt: new Date(Date.UTC(2030, 0, 1)),
            cacheHit: call.request.actions.length > 0,
            scheme: "bearer",
          });
        if (call.request.upstreamId === "slow") {
          setTimeout(reply, 1_000);
        } else {
          reply();
        }
      },
      resolveUpstream(
        call: ServerUnaryCall<ResolveUpstreamRequest, ResolveUpstreamResponse>,
        callback: sendUnaryData<ResolveUpstreamResponse>,
      ) {
        if (call.request.path.startsWith("Bad")) {
          callback({
            code: status.INVALID_ARGUMENT,
            details: "invalid path",
            metadata: statusTrailer(
              status.INVALID_ARGUMENT,
              "invalid path",
              errorReasonToJSON(ErrorReason.INVALID_PATH),
            ),
          });
          return;
        }
        const failure = {
          attempts: [
            attempt("open", 1, AttemptOutcome.ATTEMPT_OUTCOME_NOT_FOUND),
            attempt("token", 2, AttemptOutcome.ATTEMPT_OUTCOME_NOT_FOUND),
          ],
        };
        callback({
          code: status.NOT_FOUND,
          details: "not found on any upstream",
          metadata: statusTrailer(
            status.NOT_FOUND,
            "not found on any upstream",
            errorReasonToJSON(ErrorReason.NOT_FOUND_ON_UPSTREAMS),
            failure,
          ),
        });
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) =>
        error ? reject(error) : resolve(bound),
      ),
    );
    boundPort = port;
    client = new VRegistryClient({ target: `127.0.0.1:${port}`, tls: false, defaultDeadlineMs: 5_000 });
    await client.waitForReady();
  });

  after(async () => {
    client?.close();
    await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
  });

  it("calls UrlFor with request metadata", async () => {
    const reply = await client.urlFor(
      { upstreamId: "open", path: "library/alpine/manifests/latest" },
      { metadata: { "x-caller": "!ts" } },
    );
    assert.equal(reply.url, "http://upstream.test/v2/library/alpine/manifests/latest#open!ts");
  });

  it("decodes GetAuthHeaders with its timestamp", async () => {
    const reply = await client.getAuthHeaders({ upstreamId: "token", path: "a/b", actions: ["pull"] });
    assert.equal(reply.scheme, "bearer");
    assert.equal(reply.headers.Authorization, "Bearer t0k3n");
    assert.equal(reply.cacheHit, true);
    assert.equal(reply.expiresAt?.toISOString(), "2030-01-01T00:00:00.000Z");
  });

  it("turns a missed deadline into DEADLINE_EXCEEDED", async () => {
    const error = await client
      .getAuthHeaders({ upstreamId: "slow" }, { deadlineMs: 100 })
      .then(() => assert.fail("expected a deadline error"), (e: unknown) => e);
    assert.ok(error instanceof VRegistryError);
    assert.equal(error.code, status.DEADLINE_EXCEEDED);
    assert.equal(error.codeName, "DEADLINE_EXCEEDED");
    assert.equal(error.reason, "");
    assert.equal(error.reasonCode, ErrorReason.ERROR_REASON_UNSPECIFIED);
    assert.deepEqual(error.attempts, []);
  });

  it("cancels through an AbortSignal", async () => {
    const controller = new AbortController();
    const pending = client.getAuthHeaders({ upstreamId: "slow" }, { signal: controller.signal });
    setTimeout(() => controller.abort(), 20);
    const error = await pending.then(() => assert.fail("expected a cancellation"), (e: unknown) => e);
    assert.ok(error instanceof VRegistryError);
    assert.equal(error.codeName, "CANCELLED");
  });

  it("reads reason, metadata and attempts from grpc-status-details-bin", async () => {
    const error = await client
      .resolveUpstream({ registryId: "r", path: "x/manifests/latest" })
      .then(() => assert.fail("expected NOT_FOUND"), (e: unknown) => e);
    assert.ok(error instanceof VRegistryError);
    assert.equal(error.code, status.NOT_FOUND);
    assert.equal(error.codeName, "NOT_FOUND");
    assert.equal(error.details, "not found on any upstream");
    assert.equal(error.reason, "NOT_FOUND_ON_UPSTREAMS");
    assert.equal(error.reasonCode, ErrorReason.NOT_FOUND_ON_UPSTREAMS);
    assert.equal(error.domain, "vregistry.dev");
    assert.deepEqual(error.metadata, { registry_id: "r" });
    assert.deepEqual(
      error.attempts.map((a) => [a.upstreamId, attemptOutcomeToJSON(a.outcome)]),
      [
        ["open", "ATTEMPT_OUTCOME_NOT_FOUND"],
        ["token", "ATTEMPT_OUTCOME_NOT_FOUND"],
      ],
    );
    assert.equal(error.status?.code, status.NOT_FOUND);
    assert.match(error.message, /^NOT_FOUND \(NOT_FOUND_ON_UPSTREAMS\): not found on any upstream$/);
  });

  it("reads an INVALID_ARGUMENT reason without attempts", async () => {
    const error = await client
      .resolveUpstream({ registryId: "r", path: "Bad/manifests/latest" })
      .then(() => assert.fail("expected INVALID_ARGUMENT"), (e: unknown) => e);
    assert.ok(error instanceof VRegistryError);
    assert.equal(error.codeName, "INVALID_ARGUMENT");
    assert.equal(error.reasonCode, ErrorReason.INVALID_PATH);
    assert.deepEqual(error.attempts, []);
  });

  it("applies the 30 s default deadline unless the client or the call sets another", async () => {
    assert.equal(DEFAULT_DEADLINE_MS, 30_000);
    const left = async (c: VRegistryClient, deadlineMs?: number): Promise<number> =>
      Number((await c.urlFor({ upstreamId: "deadline" }, deadlineMs === undefined ? {} : { deadlineMs })).url);
    const target = `127.0.0.1:${boundPort}`;
    const plain = new VRegistryClient({ target, tls: false });
    const none = new VRegistryClient({ target, tls: false, defaultDeadlineMs: Infinity });
    try {
      const byDefault = await left(plain);
      assert.ok(byDefault > 25_000 && byDefault <= 31_000, `default deadline leaves ${byDefault} ms`);
      const perCall = await left(plain, 2_000);
      assert.ok(perCall > 0 && perCall <= 3_000, `per-call deadline leaves ${perCall} ms`);
      const clientWide = await left(client); // this suite's client: defaultDeadlineMs 5_000
      assert.ok(clientWide > 3_000 && clientWide <= 6_000, `client deadline leaves ${clientWide} ms`);
      assert.equal(await left(none), Infinity);
    } finally {
      plain.close();
      none.close();
    }
  });
});

describe("VRegistryError.reasonCode", () => {
  const errorWith = (reason: string, domain = "vregistry.dev") =>
    new VRegistryError({
      code: status.FAILED_PRECONDITION,
      details: "x",
      trailers: statusTrailer(status.FAILED_PRECONDITION, "x", reason, undefined, domain),
    });

  it("is the generated enum for every reason of the contract", () => {
    const values = Object.values(ErrorReason).filter(
      (value): value is ErrorReason => typeof value === "number" && value !== ErrorReason.UNRECOGNIZED,
    );
    assert.ok(values.length >= 25, `ErrorReason has ${values.length} values`);
    for (const value of values) {
      assert.equal(errorWith(errorReasonToJSON(value)).reasonCode, value);
    }
    assert.equal(errorWith("UPSTREAM_REALM_REFUSED").reasonCode, ErrorReason.UPSTREAM_REALM_REFUSED);
    assert.equal(errorWith("UPSTREAM_RATE_LIMITED").reasonCode, ErrorReason.UPSTREAM_RATE_LIMITED);
  });

  it("is UNRECOGNIZED for a newer reason and UNSPECIFIED without a vregistry ErrorInfo", () => {
    const newer = errorWith("SOMETHING_NEWER");
    assert.equal(newer.reasonCode, ErrorReason.UNRECOGNIZED);
    assert.equal(newer.reason, "SOMETHING_NEWER");
    assert.equal(errorWith("NOT_FOUND", "proxy.example").reasonCode, ErrorReason.ERROR_REASON_UNSPECIFIED);
    const plain = new VRegistryError({ code: status.UNAVAILABLE, details: "down" });
    assert.equal(plain.reasonCode, ErrorReason.ERROR_REASON_UNSPECIFIED);
  });
});

describe("decodeStatusDetails", () => {
  it("gives empty details without the trailer", () => {
    assert.deepEqual(decodeStatusDetails(new Metadata()), { reason: "", domain: "", metadata: {}, attempts: [] });
  });

  it("gives empty details for a malformed trailer", () => {
    const metadata = new Metadata();
    metadata.set("grpc-status-details-bin", Buffer.from([0xff, 0xff, 0xff]));
    assert.equal(decodeStatusDetails(metadata).reason, "");
  });
});

describe("VRegistryClient options", () => {
  it("requires a target and a positive deadline", () => {
    assert.throws(() => new VRegistryClient({ target: "" }), TypeError);
    assert.throws(() => new VRegistryClient({ target: "127.0.0.1:1", defaultDeadlineMs: 0 }), RangeError);
  });

  it("builds TLS clients (default, custom roots and name override)", () => {
    new VRegistryClient({ target: "127.0.0.1:1" }).close();
    new VRegistryClient({ target: "127.0.0.1:1", tls: { serverNameOverride: "vregistry.test" } }).close();
  });
});
