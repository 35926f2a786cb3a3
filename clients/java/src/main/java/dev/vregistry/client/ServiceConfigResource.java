package dev.vregistry.client;

import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParseException;
import com.google.gson.JsonParser;
import com.google.gson.JsonPrimitive;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.io.Reader;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Reads the default gRPC service config from the classpath. The one definition is the
 * repository's {@code clients/service_config.json}; {@code scripts/gen_clients.sh} copies it to
 * {@code src/main/resources/dev/vregistry/client/service_config.json} (and {@code --check}
 * reports drift), so the jar carries it beside this class and every vregistry client has the
 * same values.
 */
final class ServiceConfigResource {
  /** Resolved relative to this class's package, i.e. {@code dev/vregistry/client/}. */
  static final String NAME = "service_config.json";

  private ServiceConfigResource() {}

  /**
   * The service config in the form {@code ManagedChannelBuilder#defaultServiceConfig} takes:
   * objects as maps, arrays as lists, numbers as {@code Double}, every map and list unmodifiable.
   */
  static Map<String, ?> load() {
    try (InputStream in = ServiceConfigResource.class.getResourceAsStream(NAME)) {
      if (in == null) {
        throw new IllegalStateException(
            "vregistry client: " + NAME + " is not on the classpath beside "
                + ServiceConfigResource.class.getName() + " (a broken jar)");
      }
      try (Reader reader = new InputStreamReader(in, StandardCharsets.UTF_8)) {
        JsonElement root = JsonParser.parseReader(reader);
        if (!root.isJsonObject()) {
          throw new IllegalStateException("vregistry client: " + NAME + " is not a JSON object");
        }
        return object(root.getAsJsonObject());
      }
    } catch (IOException e) {
      throw new UncheckedIOException("vregistry client: cannot read " + NAME, e);
    } catch (JsonParseException e) {
      throw new IllegalStateException("vregistry client: " + NAME + " is not valid JSON", e);
    }
  }

  private static Map<String, Object> object(JsonObject json) {
    Map<String, Object> map = new LinkedHashMap<>();
    for (Map.Entry<String, JsonElement> entry : json.entrySet()) {
      map.put(entry.getKey(), value(entry.getValue()));
    }
    return Collections.unmodifiableMap(map);
  }

  private static Object value(JsonElement json) {
    if (json.isJsonObject()) {
      return object(json.getAsJsonObject());
    }
    if (json.isJsonArray()) {
      List<Object> list = new ArrayList<>();
      for (JsonElement item : json.getAsJsonArray()) {
        list.add(value(item));
      }
      return Collections.unmodifiableList(list);
    }
    if (!json.isJsonPrimitive()) {
      // grpc-java's service config parser has no use for null, and nothing in the config is.
      throw new IllegalStateException("vregistry client: null in " + NAME);
    }
    JsonPrimitive primitive = json.getAsJsonPrimitive();
    if (primitive.isNumber()) {
      return primitive.getAsDouble();  // grpc-java's JsonParser gives every JSON number as Double
    }
    if (primitive.isBoolean()) {
      return primitive.getAsBoolean();
    }
    return primitive.getAsString();
  }
}
