package dev.vregistry.client;

import com.google.protobuf.FieldMask;
import dev.vregistry.v1.AddUpstreamRequest;
import dev.vregistry.v1.ConfigServiceGrpc;
import dev.vregistry.v1.CreateRegistryRequest;
import dev.vregistry.v1.CreateUpstreamRequest;
import dev.vregistry.v1.DeleteRegistryRequest;
import dev.vregistry.v1.DeleteUpstreamRequest;
import dev.vregistry.v1.GetRegistryRequest;
import dev.vregistry.v1.GetUpstreamRequest;
import dev.vregistry.v1.ListRegistriesRequest;
import dev.vregistry.v1.ListRegistriesResponse;
import dev.vregistry.v1.ListUpstreamsRequest;
import dev.vregistry.v1.ListUpstreamsResponse;
import dev.vregistry.v1.RegistryConfig;
import dev.vregistry.v1.RegistryMember;
import dev.vregistry.v1.RemoveUpstreamRequest;
import dev.vregistry.v1.ReorderUpstreamsRequest;
import dev.vregistry.v1.TestUpstreamRequest;
import dev.vregistry.v1.TestUpstreamResponse;
import dev.vregistry.v1.UpdateRegistryRequest;
import dev.vregistry.v1.UpdateUpstreamRequest;
import dev.vregistry.v1.UpstreamConfig;
import io.grpc.Channel;
import io.grpc.StatusRuntimeException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.Iterator;
import java.util.List;
import java.util.NoSuchElementException;
import java.util.Set;
import java.util.Spliterator;
import java.util.Spliterators;
import java.util.function.Function;
import java.util.function.Supplier;
import java.util.stream.Stream;
import java.util.stream.StreamSupport;

/**
 * A blocking client for {@code vregistry.v1.ConfigService}, the admin API: upstreams, registries
 * and their order. Get it from {@link VRegistryClient#config()}; it shares that client's channel,
 * deadline and caller token.
 *
 * <pre>{@code
 * ConfigClient config = client.config();
 * config.createUpstream("acme", "hub", UpstreamConfig.newBuilder()
 *     .setDisplayName("Docker Hub").setUrl("https://registry-1.docker.io").build());
 * RegistryConfig r = config.createRegistry("acme", "default", RegistryConfig.getDefaultInstance());
 * r = config.addUpstream(r.getName(), ConfigClient.upstreamName("acme", "hub"), 1, r.getEtag());
 * config.listUpstreams("-").forEach(u -> System.out.println(u.getName()));
 * }</pre>
 *
 * <p>Methods return the resource (not the response envelope); {@code List*} are lazy {@link
 * Stream}s that fetch page after page; updates take plain field names for the mask; an etag,
 * when given, makes a write conditional (ABORTED with {@link
 * dev.vregistry.v1.ErrorReason#ETAG_MISMATCH} when it no longer matches). Every failure is a
 * {@link VRegistryException}. Instances are immutable and thread-safe.
 */
public final class ConfigClient {
  /** A bound on pages per listing, so a server that repeated its page tokens cannot spin us. */
  static final int MAX_PAGES = 100_000;

  private final ConfigServiceGrpc.ConfigServiceBlockingStub stub;
  private final CallSettings settings;

  ConfigClient(Channel channel, CallSettings settings) {
    this(ConfigServiceGrpc.newBlockingStub(channel), settings);
  }

  private ConfigClient(ConfigServiceGrpc.ConfigServiceBlockingStub stub, CallSettings settings) {
    this.stub = stub;
    this.settings = settings;
  }

  /** The same client with another deadline for every call. */
  public ConfigClient withDeadline(Duration deadline) {
    return new ConfigClient(stub, settings.withDeadline(deadline));
  }

  /** The same client sending another caller token ({@code ""} or {@code null}: none). */
  public ConfigClient withCallerToken(String callerToken) {
    return new ConfigClient(stub, settings.withCallerToken(callerToken));
  }

  /** The generated blocking stub, with this client's deadline and caller token. */
  public ConfigServiceGrpc.ConfigServiceBlockingStub blockingStub() {
    return settings.apply(stub, null);
  }

  // ---------------------------------------------------------------- names and masks

  /** "groups/{group}"; a name already starting with "groups/" is kept; "-": every group. */
  public static String groupName(String group) {
    return group.startsWith("groups/") ? group : "groups/" + group;
  }

  /** "groups/{group}/upstreams/{upstreamId}". */
  public static String upstreamName(String group, String upstreamId) {
    return groupName(group) + "/upstreams/" + upstreamId;
  }

  /** "groups/{group}/registries/{registryId}". */
  public static String registryName(String group, String registryId) {
    return groupName(group) + "/registries/" + registryId;
  }

  /**
   * A field mask from plain field names: {@code "displayName"} and {@code "display_name"} both
   * give the proto path {@code display_name}; {@code "*"} stays.
   */
  public static FieldMask fieldMask(String... fields) {
    FieldMask.Builder mask = FieldMask.newBuilder();
    for (String field : fields) {
      mask.addPaths(snakeCase(field));
    }
    return mask.build();
  }

  private static String snakeCase(String field) {
    StringBuilder out = new StringBuilder(field.length() + 4);
    for (char c : field.toCharArray()) {
      if (Character.isUpperCase(c)) {
        out.append('_').append(Character.toLowerCase(c));
      } else {
        out.append(c);
      }
    }
    return out.toString();
  }

  private static String orEmpty(String value) {
    return value == null ? "" : value;
  }

  // ---------------------------------------------------------------- upstreams

  /** CreateUpstream in {@code group} ("acme" or "groups/acme"). */
  public UpstreamConfig createUpstream(String group, String upstreamId, UpstreamConfig upstream) {
    return createUpstream(
        CreateUpstreamRequest.newBuilder()
            .setParent(groupName(group))
            .setUpstreamId(upstreamId)
            .setUpstream(upstream)
            .build());
  }

  /** CreateUpstream with a full request. */
  public UpstreamConfig createUpstream(CreateUpstreamRequest request) {
    return call(() -> stub().createUpstream(request).getUpstream());
  }

  /** GetUpstream by resource name, "groups/{group}/upstreams/{upstream}". */
  public UpstreamConfig getUpstream(String name) {
    GetUpstreamRequest request = GetUpstreamRequest.newBuilder().setName(name).build();
    return call(() -> stub().getUpstream(request).getUpstream());
  }

  /** Every upstream of {@code group} ("-": every group), ordered by id, page by page. */
  public Stream<UpstreamConfig> listUpstreams(String group) {
    return listUpstreams(ListUpstreamsRequest.newBuilder().setParent(groupName(group)).build());
  }

  /** ListUpstreams from {@code request}'s page (size and token) on, every later page too. */
  public Stream<UpstreamConfig> listUpstreams(ListUpstreamsRequest request) {
    return pages(
        request.getPageToken(),
        token -> {
          ListUpstreamsResponse page =
              listUpstreamsPage(request.toBuilder().setPageToken(token).build());
          return new Page<>(page.getUpstreamsList(), page.getNextPageToken());
        });
  }

  /** One page of ListUpstreams, with its next_page_token. */
  public ListUpstreamsResponse listUpstreamsPage(ListUpstreamsRequest request) {
    return call(() -> stub().listUpstreams(request));
  }

  /**
   * UpdateUpstream of the fields named (plain names; none: every field set in {@code upstream}).
   * {@code upstream} carries the resource name, the new values and, to make the write
   * conditional, the etag read before.
   */
  public UpstreamConfig updateUpstream(UpstreamConfig upstream, String... fields) {
    UpdateUpstreamRequest.Builder request = UpdateUpstreamRequest.newBuilder().setUpstream(upstream);
    if (fields.length > 0) {
      request.setUpdateMask(fieldMask(fields));
    }
    return updateUpstream(request.build());
  }

  /** UpdateUpstream with a full request. */
  public UpstreamConfig updateUpstream(UpdateUpstreamRequest request) {
    return call(() -> stub().updateUpstream(request).getUpstream());
  }

  /**
   * DeleteUpstream ({@code etag} null or "" for unconditional; {@code force} also removes it from
   * its registries); gives the registries it was removed from.
   */
  public List<String> deleteUpstream(String name, String etag, boolean force) {
    return deleteUpstream(
        DeleteUpstreamRequest.newBuilder()
            .setName(name)
            .setEtag(orEmpty(etag))
            .setForce(force)
            .build());
  }

  /** DeleteUpstream with a full request. */
  public List<String> deleteUpstream(DeleteUpstreamRequest request) {
    return call(() -> List.copyOf(stub().deleteUpstream(request).getRemovedFromList()));
  }

  /** TestUpstream of a stored upstream; {@code path} null or "" for the server's default. */
  public TestUpstreamResponse testUpstream(String name, String path) {
    return testUpstream(
        TestUpstreamRequest.newBuilder().setName(name).setPath(orEmpty(path)).build());
  }

  /** TestUpstream of an unsaved upstream (validated as a create would; nothing stored). */
  public TestUpstreamResponse testUpstream(UpstreamConfig unsaved, String path) {
    return testUpstream(
        TestUpstreamRequest.newBuilder().setUpstream(unsaved).setPath(orEmpty(path)).build());
  }

  /** TestUpstream with a full request. */
  public TestUpstreamResponse testUpstream(TestUpstreamRequest request) {
    return call(() -> stub().testUpstream(request));
  }

  // ---------------------------------------------------------------- registries

  /** CreateRegistry in {@code group}; only display_name and description of {@code registry} count. */
  public RegistryConfig createRegistry(String group, String registryId, RegistryConfig registry) {
    return createRegistry(
        CreateRegistryRequest.newBuilder()
            .setParent(groupName(group))
            .setRegistryId(registryId)
            .setRegistry(registry)
            .build());
  }

  /** CreateRegistry with a full request. */
  public RegistryConfig createRegistry(CreateRegistryRequest request) {
    return call(() -> stub().createRegistry(request).getRegistry());
  }

  /** GetRegistry by resource name; its upstreams are in position order. */
  public RegistryConfig getRegistry(String name) {
    GetRegistryRequest request = GetRegistryRequest.newBuilder().setName(name).build();
    return call(() -> stub().getRegistry(request).getRegistry());
  }

  /** Every registry of {@code group} ("-": every group), ordered by id, page by page. */
  public Stream<RegistryConfig> listRegistries(String group) {
    return listRegistries(ListRegistriesRequest.newBuilder().setParent(groupName(group)).build());
  }

  /** ListRegistries from {@code request}'s page on, every later page too. */
  public Stream<RegistryConfig> listRegistries(ListRegistriesRequest request) {
    return pages(
        request.getPageToken(),
        token -> {
          ListRegistriesResponse page =
              listRegistriesPage(request.toBuilder().setPageToken(token).build());
          return new Page<>(page.getRegistriesList(), page.getNextPageToken());
        });
  }

  /** One page of ListRegistries, with its next_page_token. */
  public ListRegistriesResponse listRegistriesPage(ListRegistriesRequest request) {
    return call(() -> stub().listRegistries(request));
  }

  /** UpdateRegistry of the fields named (plain names; none: every field set). */
  public RegistryConfig updateRegistry(RegistryConfig registry, String... fields) {
    UpdateRegistryRequest.Builder request = UpdateRegistryRequest.newBuilder().setRegistry(registry);
    if (fields.length > 0) {
      request.setUpdateMask(fieldMask(fields));
    }
    return updateRegistry(request.build());
  }

  /** UpdateRegistry with a full request. */
  public RegistryConfig updateRegistry(UpdateRegistryRequest request) {
    return call(() -> stub().updateRegistry(request).getRegistry());
  }

  /** DeleteRegistry ({@code etag} null or "" for unconditional); its upstreams stay. */
  public void deleteRegistry(String name, String etag) {
    deleteRegistry(DeleteRegistryRequest.newBuilder().setName(name).setEtag(orEmpty(etag)).build());
  }

  /** DeleteRegistry with a full request. */
  public void deleteRegistry(DeleteRegistryRequest request) {
    call(() -> stub().deleteRegistry(request));
  }

  // ---------------------------------------------------------------- membership

  /** AddUpstream at {@code position} (1..n+1; 0 appends), conditional on {@code etag} if given. */
  public RegistryConfig addUpstream(String registry, String upstream, int position, String etag) {
    return addUpstream(
        AddUpstreamRequest.newBuilder()
            .setRegistry(registry)
            .setUpstream(upstream)
            .setPosition(position)
            .setEtag(orEmpty(etag))
            .build());
  }

  /** AddUpstream with a full request. */
  public RegistryConfig addUpstream(AddUpstreamRequest request) {
    return call(() -> stub().addUpstream(request).getRegistry());
  }

  /** RemoveUpstream; the upstreams below it move up. */
  public RegistryConfig removeUpstream(String registry, String upstream, String etag) {
    return removeUpstream(
        RemoveUpstreamRequest.newBuilder()
            .setRegistry(registry)
            .setUpstream(upstream)
            .setEtag(orEmpty(etag))
            .build());
  }

  /** RemoveUpstream with a full request. */
  public RegistryConfig removeUpstream(RemoveUpstreamRequest request) {
    return call(() -> stub().removeUpstream(request).getRegistry());
  }

  /** ReorderUpstreams: {@code order} lists every upstream name, the first tried first (1..n). */
  public RegistryConfig reorderUpstreams(String registry, List<String> order, String etag) {
    ReorderUpstreamsRequest.Builder request =
        ReorderUpstreamsRequest.newBuilder().setRegistry(registry).setEtag(orEmpty(etag));
    for (int i = 0; i < order.size(); i++) {
      request.addUpstreams(
          RegistryMember.newBuilder().setUpstream(order.get(i)).setPosition(i + 1).build());
    }
    return reorderUpstreams(request.build());
  }

  /** ReorderUpstreams with a full request. */
  public RegistryConfig reorderUpstreams(ReorderUpstreamsRequest request) {
    return call(() -> stub().reorderUpstreams(request).getRegistry());
  }

  // ---------------------------------------------------------------- internals

  private ConfigServiceGrpc.ConfigServiceBlockingStub stub() {
    return settings.apply(stub, null);
  }

  private static <T> T call(Supplier<T> rpc) {
    try {
      return rpc.get();
    } catch (StatusRuntimeException e) {
      throw VRegistryException.from(e);
    }
  }

  private record Page<T>(List<T> items, String nextPageToken) {}

  /** A lazy stream over every page, fetched as the stream is consumed. */
  private static <T> Stream<T> pages(String firstToken, Function<String, Page<T>> fetch) {
    Iterator<T> items =
        new Iterator<>() {
          private Iterator<T> current = List.<T>of().iterator();
          private String token = firstToken;
          private boolean last;
          private int fetched;
          private final Set<String> seen = new HashSet<>();

          @Override
          public boolean hasNext() {
            while (!current.hasNext() && !last) {
              if (++fetched > MAX_PAGES) {
                throw new IllegalStateException("ConfigClient: more than " + MAX_PAGES + " pages");
              }
              Page<T> page = fetch.apply(token);
              current = new ArrayList<>(page.items()).iterator();
              last = page.nextPageToken().isEmpty();
              if (!last && !seen.add(page.nextPageToken())) {
                throw new IllegalStateException(
                    "ConfigClient: the server repeated page token " + page.nextPageToken());
              }
              token = page.nextPageToken();
            }
            return current.hasNext();
          }

          @Override
          public T next() {
            if (!hasNext()) {
              throw new NoSuchElementException();
            }
            return current.next();
          }
        };
    return StreamSupport.stream(
        Spliterators.spliteratorUnknownSize(items, Spliterator.ORDERED | Spliterator.NONNULL),
        false);
  }
}
