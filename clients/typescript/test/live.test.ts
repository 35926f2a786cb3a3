// The cross-language contract, against a LIVE vregistry server described by the stack file
// at $VREGISTRY_STACK (written by tests/system/test_clients.py). Skipped only when that variable is
// unset. With $VREGISTRY_ANSWERS_DIR set, the answers go to <dir>/typescript.json so they
// can be compared with the other languages' clients.
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";

import {
  attemptOutcomeToJSON,
  ErrorReason,
  type UpstreamAttempt,
  VRegistryClient,
  VRegistryError,
} from "../src/index";

interface Stack {
  target: string;
  url_for: { upstream_id: string; path: string; expected_url: string };
  auth: { upstream_id: string; path: string };
  resolve_hit: {
    registry_id: string;
    path: string;
    expected_upstream_id: string;
    expected_position: number;
    expected_digest: string;
  };
  resolve_miss: { registry_id: string; path: string };
  invalid: { upstream_id: string; path: string };
}

const STACK_PATH = process.env.VREGISTRY_STACK;
const ANSWERS_DIR = process.env.VREGISTRY_ANSWERS_DIR;

const outcomes = (attempts: UpstreamAttempt[]): [string, string][] =>
  attempts.map((a) => [a.upstreamId, attemptOutcomeToJSON(a.outcome)]);

async function rejection(promise: Promise<unknown>): Promise<VRegistryError> {
  const error = await promise.then(
    () => assert.fail("the call succeeded but an error was expected"),
    (e: unknown) => e,
  );
  assert.ok(error instanceof VRegistryError, `expected a VRegistryError, got ${String(error)}`);
  return error;
}

// Each test (not the suite) is skipped so that the runner counts them as skipped.
const skip = STACK_PATH ? false : "VREGISTRY_STACK is not set";

describe("live vregistry server", () => {
  let stack: Stack;
  let client: VRegistryClient;
  const answers: Record<string, unknown> = {};

  before(async () => {
    if (!STACK_PATH) {
      return;
    }
    stack = JSON.parse(readFileSync(STACK_PATH as string, "utf8")) as Stack;
    client = new VRegistryClient({ target: stack.target, tls: false, defaultDeadlineMs: 30_000 });
    await client.waitForReady(30_000);
  });

  after(() => {
    client?.close();
    if (ANSWERS_DIR) {
      mkdirSync(ANSWERS_DIR, { recursive: true });
      const ordered = ["url_for", "auth", "resolve_hit", "resolve_miss", "invalid"]
        .filter((key) => key in answers)
        .map((key) => [key, answers[key]]);
      writeFileSync(join(ANSWERS_DIR, "typescript.json"), `${JSON.stringify(Object.fromEntries(ordered), null, 2)}\n`);
    }
  });

  it("UrlFor gives the expected URL", { skip }, async () => {
    const reply = await client.urlFor({ upstreamId: stack.url_for.upstream_id, path: stack.url_for.path });
    assert.equal(reply.url, stack.url_for.expected_url);
    answers.url_for = reply.url;
  });

  it("GetAuthHeaders gives a bearer token, cached on the second call", { skip }, async () => {
    const request = { upstreamId: stack.auth.upstream_id, path: stack.auth.path };
    const first = await client.getAuthHeaders(request);
    assert.equal(first.scheme, "bearer");
    const authorization = first.headers.Authorization ?? "";
    assert.ok(authorization.startsWith("Bearer "), "Authorization is a Bearer header");
    const second = await client.getAuthHeaders(request, { deadlineMs: 15_000 });
    assert.equal(second.scheme, "bearer");
    assert.equal(second.cacheHit, true);
    answers.auth = {
      scheme: second.scheme,
      authorization_prefix: authorization.split(" ", 1)[0],
      cache_hit_second_call: second.cacheHit,
    };
  });

  it("ResolveUpstream finds the path on the second upstream", { skip }, async () => {
    const hit = stack.resolve_hit;
    const reply = await client.resolveUpstream({ registryId: hit.registry_id, path: hit.path });
    assert.equal(reply.upstream?.id, hit.expected_upstream_id);
    assert.equal(reply.upstream?.position, hit.expected_position);
    assert.equal(reply.digest, hit.expected_digest);
    assert.ok(reply.mediaType.length > 0, "a media type");
    assert.ok(reply.size > 0, "a size");
    assert.deepEqual(outcomes(reply.attempts), [
      ["open", "ATTEMPT_OUTCOME_NOT_FOUND"],
      ["token", "ATTEMPT_OUTCOME_FOUND"],
    ]);
    answers.resolve_hit = {
      upstream_id: reply.upstream?.id,
      position: reply.upstream?.position,
      digest: reply.digest,
      media_type: reply.mediaType,
      size: reply.size,
      outcomes: outcomes(reply.attempts),
    };
  });

  it("ResolveUpstream miss fails with NOT_FOUND and the attempts in its details", { skip }, async () => {
    const miss = stack.resolve_miss;
    const error = await rejection(client.resolveUpstream({ registryId: miss.registry_id, path: miss.path }));
    assert.equal(error.codeName, "NOT_FOUND");
    assert.equal(error.reasonCode, ErrorReason.NOT_FOUND_ON_UPSTREAMS);
    assert.equal(error.domain, "vregistry.dev");
    assert.deepEqual(outcomes(error.attempts), [
      ["open", "ATTEMPT_OUTCOME_NOT_FOUND"],
      ["token", "ATTEMPT_OUTCOME_NOT_FOUND"],
    ]);
    answers.resolve_miss = { code: error.codeName, reason: error.reason, outcomes: outcomes(error.attempts) };
  });

  it("an invalid path fails with INVALID_ARGUMENT / INVALID_PATH", { skip }, async () => {
    const invalid = stack.invalid;
    const error = await rejection(client.urlFor({ upstreamId: invalid.upstream_id, path: invalid.path }));
    assert.equal(error.codeName, "INVALID_ARGUMENT");
    assert.equal(error.reasonCode, ErrorReason.INVALID_PATH);
    assert.equal(error.domain, "vregistry.dev");
    answers.invalid = { code: error.codeName, reason: error.reason };
  });
});
