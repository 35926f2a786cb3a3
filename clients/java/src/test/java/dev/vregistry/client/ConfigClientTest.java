package dev.vregistry.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Any;
import com.google.rpc.Code;
import com.google.rpc.ErrorInfo;
import dev.vregistry.v1.AddUpstreamRequest;
import dev.vregistry.v1.AddUpstreamResponse;
import dev.vregistry.v1.ConfigServiceGrpc;
import dev.vregistry.v1.CreateRegistryRequest;
import dev.vregistry.v1.CreateRegistryResponse;
import dev.vregistry.v1.CreateUpstreamRequest;
import dev.vregistry.v1.CreateUpstreamResponse;
import dev.vregistry.v1.DeleteRegistryRequest;
import dev.vregistry.v1.DeleteRegistryResponse;
import dev.vregistry.v1.DeleteUpstreamRequest;
import dev.vregistry.v1.DeleteUpstreamResponse;
import dev.vregistry.v1.ErrorReason;
import dev.vregistry.v1.GetRegistryRequest;
import dev.vregistry.v1.GetRegistryResponse;
import dev.vregistry.v1.GetUpstreamRequest;
import dev.vregistry.v1.GetUpstreamResponse;
import dev.vregistry.v1.ListRegistriesRequest;
import dev.vregistry.v1.ListRegistriesResponse;
import dev.vregistry.v1.ListUpstreamsRequest;
import dev.vregistry.v1.ListUpstreamsResponse;
import dev.vregistry.v1.RegistryConfig;
import dev.vregistry.v1.RegistryMember;
import dev.vregistry.v1.RemoveUpstreamRequest;
import dev.vregistry.v1.RemoveUpstreamResponse;
import dev.vregistry.v1.ReorderUpstreamsRequest;
import dev.vregistry.v1.ReorderUpstreamsResponse;
import dev.vregistry.v1.TestUpstreamRequest;
import dev.vregistry.v1.TestUpstreamResponse;
import dev.vregistry.v1.UpdateRegistryRequest;
import dev.vregistry.v1.UpdateRegistryResponse;
import dev.vregistry.v1.UpdateUpstreamRequest;
import dev.vregistry.v1.UpdateUpstreamResponse;
import dev.vregistry.v1.UpstreamConfig;
import dev.vregistry.v1.UpstreamServiceGrpc;
import dev.vregistry.v1.UrlForRequest;
import dev.vregistry.v1.UrlForResponse;
import io.grpc.Contexts;
import io.grpc.EquivalentAddressGroup;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.NameResolver;
import io.grpc.NameResolverProvider;
import io.grpc.NameResolverRegistry;
import io.grpc.Server;
import io.grpc.ServerCall;
import io.grpc.ServerCallHandler;
import io.grpc.ServerInterceptor;
import io.grpc.ServerInterceptors;
import io.grpc.Status;
import io.grpc.inprocess.InProcessChannelBuilder;
import io.grpc.inprocess.InProcessServerBuilder;
import io.grpc.netty.shaded.io.grpc.netty.NettyServerBuilder;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.StreamObserver;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.SocketAddress;
import java.net.URI;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.stream.Collectors;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * {@link ConfigClient} and the channel settings against stand-in servers: paging, update masks,
 * etags, caller tokens, the retry policy and round-robin of the default service config. The real
 * server's ConfigService is exercised by the consumer project (tests/consumers/java, run by
 * tests/system/test_client_consumers.py).
 */
class ConfigClientTest {
  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
  private static final List<String> IDS = List.of("u0", "u1", "u2", "u3", "u4", "u5", "u6");

  private static final List<Object> requests = new CopyOnWriteArrayList<>();
  private static final List<String> tokens = new CopyOnWriteArrayList<>();
  private static Server server;
  private static ManagedChannel channel;
  private static VRegistryClient client;

  static <T> void reply(StreamObserver<T> observer, T value) {
    observer.onNext(value);
    observer.onCompleted();
  }

  static io.grpc.StatusRuntimeException failure(Code code, ErrorReason errorReason) {
    String reason = errorReason.name();
    com.google.rpc.Status status =
        com.google.rpc.Status.newBuilder()
            .setCode(code.getNumber())
            .setMessage(reason.toLowerCase())
            .addDetails(
                Any.pack(ErrorInfo.newBuilder().setReason(reason).setDomain("vregistry.dev").build()))
            .build();
    return StatusProto.toStatusRuntimeException(status);
  }

  /** Seven upstreams u0..u6 in pages of page_size (default 3); records every request. */
  static final class StandIn extends ConfigServiceGrpc.ConfigServiceImplBase {
    @Override
    public void createUpstream(CreateUpstreamRequest r, StreamObserver<CreateUpstreamResponse> o) {
      requests.add(r);
      if (r.getUpstreamId().equals("taken")) {
        o.onError(failure(Code.ALREADY_EXISTS, ErrorReason.ALREADY_EXISTS));
        return;
      }
      UpstreamConfig u =
          r.getUpstream().toBuilder()
              .setName(r.getParent() + "/upstreams/" + r.getUpstreamId())
              .setEtag("\"e1\"")
              .build();
      reply(o, CreateUpstreamResponse.newBuilder().setUpstream(u).build());
    }

    @Override
    public void getUpstream(GetUpstreamRequest r, StreamObserver<GetUpstreamResponse> o) {
      requests.add(r);
      UpstreamConfig u = UpstreamConfig.newBuilder().setName(r.getName()).build();
      reply(o, GetUpstreamResponse.newBuilder().setUpstream(u).build());
    }

    @Override
    public void listUpstreams(ListUpstreamsRequest r, StreamObserver<ListUpstreamsResponse> o) {
      requests.add(r);
      int size = r.getPageSize() == 0 ? 3 : r.getPageSize();
      int start = r.getPageToken().isEmpty() ? 0 : Integer.parseInt(r.getPageToken());
      ListUpstreamsResponse.Builder page = ListUpstreamsResponse.newBuilder();
      for (String id : IDS.subList(start, Math.min(IDS.size(), start + size))) {
        page.addUpstreams(UpstreamConfig.newBuilder().setName("g/" + id));
      }
      if (start + size < IDS.size()) {
        page.setNextPageToken(Integer.toString(start + size));
      }
      reply(o, page.build());
    }

    @Override
    public void updateUpstream(UpdateUpstreamRequest r, StreamObserver<UpdateUpstreamResponse> o) {
      requests.add(r);
      String etag = r.getUpstream().getEtag();
      if (!etag.isEmpty() && !etag.equals("\"e1\"")) {
        o.onError(failure(Code.ABORTED, ErrorReason.ETAG_MISMATCH));
        return;
      }
      UpstreamConfig u = r.getUpstream().toBuilder().setEtag("\"e2\"").build();
      reply(o, UpdateUpstreamResponse.newBuilder().setUpstream(u).build());
    }

    @Override
    public void deleteUpstream(DeleteUpstreamRequest r, StreamObserver<DeleteUpstreamResponse> o) {
      requests.add(r);
      DeleteUpstreamResponse.Builder done = DeleteUpstreamResponse.newBuilder();
      if (r.getForce()) {
        done.addRemovedFrom("groups/g/registries/r");
      }
      reply(o, done.build());
    }

    @Override
    public void testUpstream(TestUpstreamRequest r, StreamObserver<TestUpstreamResponse> o) {
      requests.add(r);
      reply(o, TestUpstreamResponse.newBuilder().setOk(r.hasName()).setScheme("none").build());
    }

    @Override
    public void createRegistry(CreateRegistryRequest r, StreamObserver<CreateRegistryResponse> o) {
      requests.add(r);
      RegistryConfig reg =
          r.getRegistry().toBuilder()
              .setName(r.getParent() + "/registries/" + r.getRegistryId())
              .setEtag("\"r1\"")
              .build();
      reply(o, CreateRegistryResponse.newBuilder().setRegistry(reg).build());
    }

    @Override
    public void getRegistry(GetRegistryRequest r, StreamObserver<GetRegistryResponse> o) {
      requests.add(r);
      RegistryConfig reg = RegistryConfig.newBuilder().setName(r.getName()).build();
      reply(o, GetRegistryResponse.newBuilder().setRegistry(reg).build());
    }

    @Override
    public void listRegistries(ListRegistriesRequest r, StreamObserver<ListRegistriesResponse> o) {
      requests.add(r);
      // A server that keeps answering with the same token: the client must not loop forever.
      reply(
          o,
          ListRegistriesResponse.newBuilder()
              .addRegistries(RegistryConfig.newBuilder().setName("r"))
              .setNextPageToken("again")
              .build());
    }

    @Override
    public void updateRegistry(UpdateRegistryRequest r, StreamObserver<UpdateRegistryResponse> o) {
      requests.add(r);
      reply(o, UpdateRegistryResponse.newBuilder().setRegistry(r.getRegistry()).build());
    }

    @Override
    public void deleteRegistry(DeleteRegistryRequest r, StreamObserver<DeleteRegistryResponse> o) {
      requests.add(r);
      reply(o, DeleteRegistryResponse.getDefaultInstance());
    }

    @Override
    public void addUpstream(AddUpstreamRequest r, StreamObserver<AddUpstreamResponse> o) {
      requests.add(r);
      RegistryConfig reg =
          RegistryConfig.newBuilder()
              .setName(r.getRegistry())
              .addUpstreams(
                  RegistryMember.newBuilder()
                      .setUpstream(r.getUpstream())
                      .setPosition(r.getPosition()))
              .setEtag("\"r2\"")
              .build();
      reply(o, AddUpstreamResponse.newBuilder().setRegistry(reg).build());
    }

    @Override
    public void removeUpstream(RemoveUpstreamRequest r, StreamObserver<RemoveUpstreamResponse> o) {
      requests.add(r);
      RegistryConfig reg = RegistryConfig.newBuilder().setName(r.getRegistry()).build();
      reply(o, RemoveUpstreamResponse.newBuilder().setRegistry(reg).build());
    }

    @Override
    public void reorderUpstreams(
        ReorderUpstreamsRequest r, StreamObserver<ReorderUpstreamsResponse> o) {
      requests.add(r);
      RegistryConfig reg =
          RegistryConfig.newBuilder()
              .setName(r.getRegistry())
              .addAllUpstreams(r.getUpstreamsList())
              .build();
      reply(o, ReorderUpstreamsResponse.newBuilder().setRegistry(reg).build());
    }
  }

  /** Records the authorization header of every call ("" without one). */
  static final class TokenRecorder implements ServerInterceptor {
    @Override
    public <Q, A> ServerCall.Listener<Q> interceptCall(
        ServerCall<Q, A> call, Metadata headers, ServerCallHandler<Q, A> next) {
      String value = headers.get(AUTHORIZATION);
      tokens.add(value == null ? "" : value);
      return Contexts.interceptCall(io.grpc.Context.current(), call, headers, next);
    }
  }

  @BeforeAll
  static void start() throws Exception {
    String name = InProcessServerBuilder.generateName();
    server =
        InProcessServerBuilder.forName(name)
            .directExecutor()
            .addService(ServerInterceptors.intercept(new StandIn(), new TokenRecorder()))
            .build()
            .start();
    channel = InProcessChannelBuilder.forName(name).directExecutor().build();
    client = VRegistryClient.builder().channel(channel).callerToken("admin-token").build();
  }

  @AfterAll
  static void stop() {
    client.close();
    channel.shutdownNow();
    server.shutdownNow();
  }

  @SuppressWarnings("unchecked")
  static <T> T last() {
    return (T) requests.get(requests.size() - 1);
  }

  static String lastToken() {
    return tokens.get(tokens.size() - 1);
  }

  @Test
  void namesAndMasksFromPlainNames() {
    assertEquals("groups/acme", ConfigClient.groupName("acme"));
    assertEquals("groups/acme", ConfigClient.groupName("groups/acme"));
    assertEquals("groups/acme/upstreams/hub", ConfigClient.upstreamName("acme", "hub"));
    assertEquals("groups/acme/registries/r", ConfigClient.registryName("groups/acme", "r"));
    assertEquals(
        List.of("display_name", "realm_allow_hosts", "cache_validity_hours", "*"),
        ConfigClient.fieldMask("displayName", "realm_allow_hosts", "cacheValidityHours", "*")
            .getPathsList());
  }

  @Test
  void createsInAGroupWithTheClientsCallerToken() {
    UpstreamConfig created =
        client
            .config()
            .createUpstream(
                "acme",
                "hub",
                UpstreamConfig.newBuilder()
                    .setDisplayName("Hub")
                    .setUrl("https://registry.test")
                    .setCacheValidityHours(0)
                    .build());
    assertEquals("groups/acme/upstreams/hub", created.getName());
    assertEquals("\"e1\"", created.getEtag());
    CreateUpstreamRequest sent = last();
    assertTrue(sent.getUpstream().hasCacheValidityHours(), "an explicit 0 is sent");
    assertEquals("Bearer admin-token", lastToken());
  }

  @Test
  void aViewSendsAnotherCallerTokenOrNone() {
    client.config().withCallerToken("other").getUpstream("groups/g/upstreams/u");
    assertEquals("Bearer other", lastToken());
    client.withCallerToken("").config().getUpstream("groups/g/upstreams/u");
    assertEquals("", lastToken());
    assertFalse(client.config().withCallerToken("secret-value").toString().contains("secret-value"));
  }

  @Test
  void listsEveryPageLazily() {
    int before = requests.size();
    List<String> names =
        client.config()
            .listUpstreams(ListUpstreamsRequest.newBuilder().setParent("groups/-").setPageSize(3).build())
            .map(UpstreamConfig::getName)
            .collect(Collectors.toList());
    assertEquals(List.of("g/u0", "g/u1", "g/u2", "g/u3", "g/u4", "g/u5", "g/u6"), names);
    List<String> tokensSent = new ArrayList<>();
    for (Object r : requests.subList(before, requests.size())) {
      tokensSent.add(((ListUpstreamsRequest) r).getPageToken());
    }
    assertEquals(List.of("", "3", "6"), tokensSent);
    // Lazy: taking two items fetches one page only.
    int start = requests.size();
    assertEquals(2, client.config().listUpstreams("-").limit(2).count());
    assertEquals(start + 1, requests.size());
    ListUpstreamsRequest sent = last();
    assertEquals("groups/-", sent.getParent());
  }

  @Test
  void stopsAListingWhoseServerRepeatsItsToken() {
    List<String> names = new ArrayList<>();
    IllegalStateException error =
        assertThrows(
            IllegalStateException.class,
            () -> client.config().listRegistries("acme").forEach(r -> names.add(r.getName())));
    assertTrue(error.getMessage().contains("repeated page token"), error.getMessage());
    assertEquals(List.of("r"), names);
  }

  @Test
  void updatesWithAMaskOfPlainNamesAndPassesTheEtag() {
    UpstreamConfig changed =
        client.config()
            .updateUpstream(
                UpstreamConfig.newBuilder()
                    .setName("groups/acme/upstreams/hub")
                    .setEtag("\"e1\"")
                    .setDisplayName("New")
                    .build(),
                "displayName",
                "realmAllowHosts");
    assertEquals("\"e2\"", changed.getEtag());
    UpdateUpstreamRequest sent = last();
    assertEquals(List.of("display_name", "realm_allow_hosts"), sent.getUpdateMask().getPathsList());
    assertEquals("\"e1\"", sent.getUpstream().getEtag());
  }

  @Test
  void aStaleEtagIsAbortedEtagMismatch() {
    VRegistryException error =
        assertThrows(
            VRegistryException.class,
            () ->
                client.config()
                    .updateUpstream(
                        UpstreamConfig.newBuilder()
                            .setName("groups/acme/upstreams/hub")
                            .setEtag("\"old\"")
                            .build()));
    assertEquals(Status.Code.ABORTED, error.getStatusCode());
    assertEquals(ErrorReason.ETAG_MISMATCH, error.getReasonCode());
    UpdateUpstreamRequest sent = last();
    assertFalse(sent.hasUpdateMask(), "no fields named: no mask");
    VRegistryException exists =
        assertThrows(
            VRegistryException.class,
            () -> client.config().createUpstream("acme", "taken", UpstreamConfig.getDefaultInstance()));
    assertEquals(ErrorReason.ALREADY_EXISTS, exists.getReasonCode());
  }

  @Test
  void coversTheOtherRpcs() {
    ConfigClient config = client.config();
    assertEquals(
        List.of("groups/g/registries/r"), config.deleteUpstream("groups/g/upstreams/u", "\"e\"", true));
    DeleteUpstreamRequest deleted = last();
    assertEquals("\"e\"", deleted.getEtag());
    assertTrue(config.testUpstream("groups/g/upstreams/u", "a/manifests/1").getOk());
    assertFalse(
        config.testUpstream(UpstreamConfig.newBuilder().setUrl("https://x.test").build(), null).getOk());
    RegistryConfig registry =
        config.createRegistry("g", "r", RegistryConfig.newBuilder().setDisplayName("R").build());
    assertEquals("groups/g/registries/r", registry.getName());
    assertEquals(registry.getName(), config.getRegistry(registry.getName()).getName());
    config.updateRegistry(registry.toBuilder().setDescription("d").build(), "description");
    UpdateRegistryRequest updated = last();
    assertEquals(List.of("description"), updated.getUpdateMask().getPathsList());
    RegistryConfig added = config.addUpstream(registry.getName(), "groups/g/upstreams/u", 1, registry.getEtag());
    assertEquals(1, added.getUpstreams(0).getPosition());
    AddUpstreamRequest add = last();
    assertEquals("\"r1\"", add.getEtag());
    config.removeUpstream(registry.getName(), "groups/g/upstreams/u", null);
    RemoveUpstreamRequest removed = last();
    assertEquals("", removed.getEtag());
    RegistryConfig reordered =
        config.reorderUpstreams(
            registry.getName(), List.of("groups/g/upstreams/b", "groups/g/upstreams/a"), "\"x\"");
    assertEquals("groups/g/upstreams/b", reordered.getUpstreams(0).getUpstream());
    assertEquals(2, reordered.getUpstreams(1).getPosition());
    config.deleteRegistry(registry.getName(), "\"y\"");
    DeleteRegistryRequest gone = last();
    assertEquals("\"y\"", gone.getEtag());
  }

  // ------------------------------------------------------------------ the service config

  /** UrlFor answers UNAVAILABLE twice, then succeeds: with the retry policy the call succeeds. */
  static final class Flaky extends UpstreamServiceGrpc.UpstreamServiceImplBase {
    final AtomicInteger attempts = new AtomicInteger();
    final String label;

    Flaky(String label) {
      this.label = label;
    }

    @Override
    public void urlFor(UrlForRequest request, StreamObserver<UrlForResponse> reply) {
      int n = attempts.incrementAndGet();
      if (label.equals("flaky") && n % 3 != 0) {
        reply.onError(Status.UNAVAILABLE.withDescription("pod going away").asRuntimeException());
        return;
      }
      reply(reply, UrlForResponse.newBuilder().setUrl(label + " " + n).build());
    }
  }

  static Server loopbackServer(Flaky service) throws Exception {
    return NettyServerBuilder.forAddress(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0))
        .addService(service)
        .build()
        .start();
  }

  @Test
  void defaultServiceConfigIsRoundRobinWithRetriesOfUnavailable() {
    assertEquals(
        List.of(java.util.Map.of("round_robin", java.util.Map.of())),
        VRegistryClient.DEFAULT_SERVICE_CONFIG.get("loadBalancingConfig"));
  }

  @Test
  void retriesUnavailable() throws Exception {
    Flaky flaky = new Flaky("flaky");
    Server loopback = loopbackServer(flaky);
    String target = "127.0.0.1:" + loopback.getPort();
    try (VRegistryClient retrying = VRegistryClient.builder().target(target).usePlaintext().build()) {
      assertEquals("flaky 3", retrying.urlFor("u", "p").getUrl());
      assertEquals(3, flaky.attempts.get());
      flaky.attempts.set(0);
      try (VRegistryClient plain =
          VRegistryClient.builder().target(target).usePlaintext().serviceConfig(null).build()) {
        VRegistryException error = assertThrows(VRegistryException.class, () -> plain.urlFor("u", "p"));
        assertEquals(Status.Code.UNAVAILABLE, error.getStatusCode());
        assertEquals(1, flaky.attempts.get());
      }
    } finally {
      loopback.shutdownNow();
    }
  }

  /** Resolves "two:///anything" to the addresses given, as a DNS name with two A records would. */
  static final class TwoAddresses extends NameResolverProvider {
    final List<SocketAddress> addresses;

    TwoAddresses(List<SocketAddress> addresses) {
      this.addresses = addresses;
    }

    @Override
    protected boolean isAvailable() {
      return true;
    }

    @Override
    protected int priority() {
      return 5;
    }

    @Override
    public String getDefaultScheme() {
      return "two";
    }

    @Override
    public NameResolver newNameResolver(URI target, NameResolver.Args args) {
      if (!"two".equals(target.getScheme())) {
        return null;
      }
      return new NameResolver() {
        @Override
        public String getServiceAuthority() {
          return "two.test";
        }

        @Override
        public void start(Listener2 listener) {
          List<EquivalentAddressGroup> groups = new ArrayList<>();
          for (SocketAddress address : addresses) {
            groups.add(new EquivalentAddressGroup(address));
          }
          listener.onResult(ResolutionResult.newBuilder().setAddresses(groups).build());
        }

        @Override
        public void shutdown() {}
      };
    }
  }

  @Test
  void spreadsCallsOverEveryAddress() throws Exception {
    Server a = loopbackServer(new Flaky("a"));
    Server b = loopbackServer(new Flaky("b"));
    TwoAddresses resolver =
        new TwoAddresses(
            List.of(
                new InetSocketAddress(InetAddress.getLoopbackAddress(), a.getPort()),
                new InetSocketAddress(InetAddress.getLoopbackAddress(), b.getPort())));
    NameResolverRegistry.getDefaultRegistry().register(resolver);
    Set<String> seen = Collections.newSetFromMap(new ConcurrentHashMap<>());
    try (VRegistryClient spread =
        VRegistryClient.builder().target("two:///vregistry").usePlaintext().build()) {
      for (int i = 0; i < 6; i++) {
        seen.add(spread.urlFor("u", "p").getUrl().split(" ")[0]);
      }
    } finally {
      NameResolverRegistry.getDefaultRegistry().deregister(resolver);
      a.shutdownNow();
      b.shutdownNow();
    }
    assertEquals(Set.of("a", "b"), seen);
  }

  @Test
  void acceptsADnsTarget() throws Exception {
    Server loopback = loopbackServer(new Flaky("dns"));
    // localhost comes from /etc/hosts: no query leaves the machine.
    try (VRegistryClient viaDns =
        VRegistryClient.builder().target("dns:///localhost:" + loopback.getPort()).usePlaintext().build()) {
      assertEquals("dns 1", viaDns.urlFor("u", "p").getUrl());
    } finally {
      loopback.shutdownNow();
    }
  }
}
