package consumer;

import com.google.gson.Gson;
import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import dev.vregistry.client.ConfigClient;
import dev.vregistry.client.VRegistryClient;
import dev.vregistry.client.VRegistryException;
import dev.vregistry.v1.RegistryConfig;
import dev.vregistry.v1.ResolveUpstreamResponse;
import dev.vregistry.v1.UpstreamAttempt;
import dev.vregistry.v1.UpstreamConfig;
import java.io.File;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The seed's flow through the installed dev.vregistry:vregistry-client: two upstreams, a
 * registry, the upstreams at positions 1 and 2 (ConfigService), then ResolveUpstream
 * (UpstreamService). Input: the JSON file in args[0] (tests/support/consumers.py describes it).
 * Output: one JSON line on stdout.
 */
public final class Main {
  private Main() {}

  public static void main(String[] args) throws Exception {
    JsonObject input = new Gson().fromJson(Files.readString(Path.of(args[0])), JsonObject.class);
    String group = input.get("group").getAsString();
    try (VRegistryClient client = connect(input)) {
      ConfigClient config = client.config();
      List<String> names = new ArrayList<>();
      for (JsonElement element : input.getAsJsonArray("upstreams")) {
        JsonObject u = element.getAsJsonObject();
        UpstreamConfig.Builder upstream =
            UpstreamConfig.newBuilder()
                .setDisplayName(u.get("display_name").getAsString())
                .setUrl(u.get("url").getAsString())
                .setAllowHttp(u.get("allow_http").getAsBoolean())
                .setUsername(u.get("username").getAsString())
                .setPassword(u.get("password").getAsString());
        u.getAsJsonArray("realm_allow_hosts").forEach(h -> upstream.addRealmAllowHosts(h.getAsString()));
        names.add(config.createUpstream(group, u.get("id").getAsString(), upstream.build()).getName());
      }
      String registryId = input.get("registry_id").getAsString();
      RegistryConfig registry =
          config.createRegistry(
              group, registryId, RegistryConfig.newBuilder().setDisplayName("Registry " + registryId).build());
      for (int i = 0; i < names.size(); i++) {
        // Each write is conditional on the etag of the one before.
        registry = config.addUpstream(registry.getName(), names.get(i), i + 1, registry.getEtag());
      }
      ResolveUpstreamResponse hit = client.resolveUpstream(registryId, input.get("path").getAsString());
      System.out.println(new Gson().toJson(answer(hit)));
    } catch (VRegistryException e) {
      System.err.println("consumer failed: " + e.getMessage() + " attempts=" + e.getAttempts());
      System.exit(1);
    }
  }

  private static VRegistryClient connect(JsonObject input) {
    VRegistryClient.Builder builder = VRegistryClient.builder().target(input.get("target").getAsString());
    JsonElement token = input.get("token");
    if (token != null && !token.isJsonNull()) {
      builder.callerToken(token.getAsString());
    }
    JsonElement tls = input.get("tls");
    if (tls == null || tls.isJsonNull()) {
      builder.usePlaintext();
    } else {
      JsonObject t = tls.getAsJsonObject();
      builder.trustCertificates(new File(t.get("ca").getAsString()));
      if (t.has("cert") && !t.get("cert").isJsonNull()) {
        builder.clientCertificate(new File(t.get("cert").getAsString()), new File(t.get("key").getAsString()));
      }
    }
    return builder.build();
  }

  private static Map<String, Object> answer(ResolveUpstreamResponse hit) {
    JsonArray outcomes = new JsonArray();
    for (UpstreamAttempt attempt : hit.getAttemptsList()) {
      JsonArray pair = new JsonArray();
      pair.add(attempt.getUpstreamId());
      pair.add(attempt.getOutcome().name());
      outcomes.add(pair);
    }
    Map<String, Object> answer = new LinkedHashMap<>();
    answer.put("upstream_id", hit.getUpstream().getId());
    answer.put("position", hit.getUpstream().getPosition());
    answer.put("url", hit.getUrl());
    answer.put("digest", hit.getDigest());
    answer.put("media_type", hit.getMediaType());
    answer.put("size", hit.getSize());
    answer.put("outcomes", outcomes);
    return answer;
  }
}
