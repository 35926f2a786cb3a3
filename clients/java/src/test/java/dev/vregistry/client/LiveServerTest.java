package dev.vregistry.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.gson.JsonObject;
import dev.vregistry.v1.ErrorReason;
import dev.vregistry.v1.GetAuthHeadersResponse;
import dev.vregistry.v1.ResolveUpstreamResponse;
import dev.vregistry.v1.UpstreamAttempt;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.condition.EnabledIfEnvironmentVariable;

/**
 * The cross-language contract, against a LIVE vregistry server described by the stack file at
 * {@code $VREGISTRY_STACK} (written by tests/system/test_clients.py). Skipped only when that variable is
 * unset. With {@code $VREGISTRY_ANSWERS_DIR} set, the answers go to {@code <dir>/java.json} so
 * they can be compared with the other languages' clients.
 */
@EnabledIfEnvironmentVariable(named = "VREGISTRY_STACK", matches = ".*", disabledReason = "VREGISTRY_STACK is not set")
class LiveServerTest {
  private static final Gson GSON = new GsonBuilder().setPrettyPrinting().disableHtmlEscaping().create();
  private static final List<String> ORDER =
      List.of("url_for", "auth", "resolve_hit", "resolve_miss", "invalid");

  private static JsonObject stack;
  private static VRegistryClient client;
  private static final Map<String, Object> answers = new ConcurrentHashMap<>();

  @BeforeAll
  static void connect() throws IOException {
    String path = System.getenv("VREGISTRY_STACK");
    stack = GSON.fromJson(Files.readString(Path.of(path), StandardCharsets.UTF_8), JsonObject.class);
    client =
        VRegistryClient.builder()
            .target(stack.get("target").getAsString())
            .usePlaintext()
            .defaultDeadline(Duration.ofSeconds(30))
            .build();
  }

  @AfterAll
  static void writeAnswers() throws IOException {
    if (client != null) {
      client.close();
    }
    String dir = System.getenv("VREGISTRY_ANSWERS_DIR");
    if (dir == null || dir.isEmpty()) {
      return;
    }
    Map<String, Object> ordered = new LinkedHashMap<>();
    for (String key : ORDER) {
      if (answers.containsKey(key)) {
        ordered.put(key, answers.get(key));
      }
    }
    Path out = Path.of(dir);
    Files.createDirectories(out);
    Files.writeString(out.resolve("java.json"), GSON.toJson(ordered) + "\n", StandardCharsets.UTF_8);
  }

  private static String str(String section, String field) {
    return stack.getAsJsonObject(section).get(field).getAsString();
  }

  private static List<List<String>> outcomes(List<UpstreamAttempt> attempts) {
    return attempts.stream().map(a -> List.of(a.getUpstreamId(), a.getOutcome().name())).toList();
  }

  private static Map<String, Object> map(Object... pairs) {
    Map<String, Object> result = new LinkedHashMap<>();
    for (int i = 0; i < pairs.length; i += 2) {
      result.put((String) pairs[i], pairs[i + 1]);
    }
    return result;
  }

  @Test
  void urlForGivesTheExpectedUrl() {
    String url = client.urlFor(str("url_for", "upstream_id"), str("url_for", "path")).getUrl();
    assertEquals(str("url_for", "expected_url"), url);
    answers.put("url_for", url);
  }

  @Test
  void getAuthHeadersGivesABearerTokenCachedOnTheSecondCall() {
    String upstream = str("auth", "upstream_id");
    String path = str("auth", "path");
    GetAuthHeadersResponse first = client.getAuthHeaders(upstream, path);
    assertEquals("bearer", first.getScheme());
    String authorization = first.getHeadersOrDefault("Authorization", "");
    assertTrue(authorization.startsWith("Bearer "), "Authorization is a Bearer header");
    GetAuthHeadersResponse second = client.getAuthHeaders(upstream, path);
    assertEquals("bearer", second.getScheme());
    assertTrue(second.getCacheHit(), "the second identical call is a cache hit");
    answers.put(
        "auth",
        map(
            "scheme", second.getScheme(),
            "authorization_prefix", authorization.split(" ", 2)[0],
            "cache_hit_second_call", second.getCacheHit()));
  }

  @Test
  void resolveUpstreamFindsThePathOnTheSecondUpstream() {
    ResolveUpstreamResponse reply =
        client.resolveUpstream(str("resolve_hit", "registry_id"), str("resolve_hit", "path"));
    assertEquals(str("resolve_hit", "expected_upstream_id"), reply.getUpstream().getId());
    assertEquals(
        stack.getAsJsonObject("resolve_hit").get("expected_position").getAsInt(),
        reply.getUpstream().getPosition());
    assertEquals(str("resolve_hit", "expected_digest"), reply.getDigest());
    assertTrue(!reply.getMediaType().isEmpty(), "a media type");
    assertTrue(reply.getSize() > 0, "a size");
    assertEquals(
        List.of(
            List.of("open", "ATTEMPT_OUTCOME_NOT_FOUND"), List.of("token", "ATTEMPT_OUTCOME_FOUND")),
        outcomes(reply.getAttemptsList()));
    answers.put(
        "resolve_hit",
        map(
            "upstream_id", reply.getUpstream().getId(),
            "position", reply.getUpstream().getPosition(),
            "digest", reply.getDigest(),
            "media_type", reply.getMediaType(),
            "size", reply.getSize(),
            "outcomes", outcomes(reply.getAttemptsList())));
  }

  @Test
  void resolveUpstreamMissFailsWithNotFoundAndTheAttemptsInItsDetails() {
    VRegistryException error =
        assertThrows(
            VRegistryException.class,
            () ->
                client.resolveUpstream(
                    str("resolve_miss", "registry_id"), str("resolve_miss", "path")));
    assertEquals("NOT_FOUND", error.getCodeName());
    assertEquals(ErrorReason.NOT_FOUND_ON_UPSTREAMS, error.getReasonCode());
    assertEquals(VRegistryException.DOMAIN, error.getDomain());
    assertEquals(
        List.of(
            List.of("open", "ATTEMPT_OUTCOME_NOT_FOUND"),
            List.of("token", "ATTEMPT_OUTCOME_NOT_FOUND")),
        outcomes(error.getAttempts()));
    answers.put(
        "resolve_miss",
        map(
            "code", error.getCodeName(),
            "reason", error.getReason(),
            "outcomes", outcomes(error.getAttempts())));
  }

  @Test
  void anInvalidPathFailsWithInvalidArgument() {
    VRegistryException error =
        assertThrows(
            VRegistryException.class,
            () -> client.urlFor(str("invalid", "upstream_id"), str("invalid", "path")));
    assertEquals("INVALID_ARGUMENT", error.getCodeName());
    assertEquals(ErrorReason.INVALID_PATH, error.getReasonCode());
    assertEquals(VRegistryException.DOMAIN, error.getDomain());
    answers.put("invalid", map("code", error.getCodeName(), "reason", error.getReason()));
  }
}
