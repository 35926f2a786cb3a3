package dev.vregistry.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.google.protobuf.Any;
import com.google.rpc.Code;
import com.google.rpc.ErrorInfo;
import dev.vregistry.v1.AttemptOutcome;
import dev.vregistry.v1.ErrorReason;
import dev.vregistry.v1.GetAuthHeadersRequest;
import dev.vregistry.v1.GetAuthHeadersResponse;
import dev.vregistry.v1.ResolveUpstreamFailure;
import dev.vregistry.v1.ResolveUpstreamRequest;
import dev.vregistry.v1.ResolveUpstreamResponse;
import dev.vregistry.v1.UpstreamAttempt;
import dev.vregistry.v1.UpstreamServiceGrpc;
import dev.vregistry.v1.UrlForRequest;
import dev.vregistry.v1.UrlForResponse;
import io.grpc.Context;
import io.grpc.Deadline;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Server;
import io.grpc.Status;
import io.grpc.inprocess.InProcessChannelBuilder;
import io.grpc.inprocess.InProcessServerBuilder;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.StreamObserver;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletionException;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

/**
 * Offline tests: an in-process server stands in for vregistry, so the wrapper's deadlines,
 * async adaptation and error decoding are checked without the Python server. The live
 * contract is in {@link LiveServerTest}.
 */
class InProcessServerTest {
  private static Server server;
  private static ManagedChannel channel;
  private static VRegistryClient client;

  static UpstreamAttempt attempt(String id, int position, AttemptOutcome outcome) {
    return UpstreamAttempt.newBuilder()
        .setUpstreamId(id)
        .setPosition(position)
        .setOutcome(outcome)
        .setHttpStatus(404)
        .build();
  }

  static final class FakeService extends UpstreamServiceGrpc.UpstreamServiceImplBase {
    @Override
    public void urlFor(UrlForRequest request, StreamObserver<UrlForResponse> reply) {
      if (request.getUpstreamId().equals("deadline")) {
        // Echo how many milliseconds the call's deadline leaves ("none" without one).
        Deadline deadline = Context.current().getDeadline();
        reply.onNext(
            UrlForResponse.newBuilder()
                .setUrl(
                    deadline == null
                        ? "none"
                        : Long.toString(deadline.timeRemaining(TimeUnit.MILLISECONDS)))
                .build());
        reply.onCompleted();
        return;
      }
      if (request.getPath().startsWith("Bad")) {
        com.google.rpc.Status status =
            com.google.rpc.Status.newBuilder()
                .setCode(Code.INVALID_ARGUMENT_VALUE)
                .setMessage("invalid path")
                .addDetails(
                    Any.pack(
                        ErrorInfo.newBuilder()
                            .setReason(ErrorReason.INVALID_PATH.name())
                            .setDomain("vregistry.dev")
                            .putMetadata("path", request.getPath())
                            .build()))
                .build();
        reply.onError(StatusProto.toStatusRuntimeException(status));
        return;
      }
      reply.onNext(
          UrlForResponse.newBuilder()
              .setUrl("http://upstream.test/v2/" + request.getPath() + "#" + request.getUpstreamId())
              .build());
      reply.onCompleted();
    }

    @Override
    public void getAuthHeaders(
        GetAuthHeadersRequest request, StreamObserver<GetAuthHeadersResponse> reply) {
      if (request.getUpstreamId().equals("slow")) {
        try {
          Thread.sleep(1_000);
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
        }
      }
      reply.onNext(
          GetAuthHeadersResponse.newBuilder()
              .putHeaders("Authorization", "Bearer t0k3n")
              .setScheme("bearer")
              .setCacheHit(request.getActionsCount() > 0)
              .build());
      reply.onCompleted();
    }

    @Override
    public void resolveUpstream(
        ResolveUpstreamRequest request, StreamObserver<ResolveUpstreamResponse> reply) {
      ResolveUpstreamFailure failure =
          ResolveUpstreamFailure.newBuilder()
              .addAttempts(attempt("open", 1, AttemptOutcome.ATTEMPT_OUTCOME_NOT_FOUND))
              .addAttempts(attempt("token", 2, AttemptOutcome.ATTEMPT_OUTCOME_NOT_FOUND))
              .build();
      com.google.rpc.Status status =
          com.google.rpc.Status.newBuilder()
              .setCode(Code.NOT_FOUND_VALUE)
              .setMessage("not found on any upstream")
              .addDetails(
                  Any.pack(
                      ErrorInfo.newBuilder()
                          .setReason(ErrorReason.NOT_FOUND_ON_UPSTREAMS.name())
                          .setDomain("vregistry.dev")
                          .putMetadata("registry_id", request.getRegistryId())
                          .build()))
              .addDetails(Any.pack(failure))
              .build();
      reply.onError(StatusProto.toStatusRuntimeException(status));
    }
  }

  @BeforeAll
  static void start() throws Exception {
    String name = InProcessServerBuilder.generateName();
    server =
        InProcessServerBuilder.forName(name)
            .addService(new FakeService())
            .build()
            .start();
    channel = InProcessChannelBuilder.forName(name).build();
    client =
        VRegistryClient.builder().channel(channel).defaultDeadline(Duration.ofSeconds(5)).build();
  }

  @AfterAll
  static void stop() throws Exception {
    client.close();
    channel.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
    server.shutdownNow().awaitTermination(5, TimeUnit.SECONDS);
  }

  @Test
  void urlForReturnsTheUrl() {
    assertEquals(
        "http://upstream.test/v2/library/alpine/manifests/latest#open",
        client.urlFor("open", "library/alpine/manifests/latest").getUrl());
  }

  @Test
  void getAuthHeadersPassesActions() {
    GetAuthHeadersResponse reply = client.getAuthHeaders("token", "a/b", "pull");
    assertEquals("bearer", reply.getScheme());
    assertEquals("Bearer t0k3n", reply.getHeadersMap().get("Authorization"));
    assertTrue(reply.getCacheHit());
  }

  @Test
  void missedDeadlineIsDeadlineExceeded() {
    VRegistryException error =
        assertThrows(
            VRegistryException.class,
            () ->
                client.getAuthHeaders(
                    GetAuthHeadersRequest.newBuilder().setUpstreamId("slow").build(),
                    Duration.ofMillis(100)));
    assertEquals(Status.Code.DEADLINE_EXCEEDED, error.getStatusCode());
    assertEquals("DEADLINE_EXCEEDED", error.getCodeName());
    assertEquals("", error.getReason());
    assertEquals(ErrorReason.ERROR_REASON_UNSPECIFIED, error.getReasonCode());
    assertEquals(List.of(), error.getAttempts());
  }

  @Test
  void resolveMissCarriesReasonMetadataAndAttempts() {
    VRegistryException error =
        assertThrows(
            VRegistryException.class,
            () -> client.resolveUpstream("r", "public/missing/manifests/latest"));
    assertEquals(Status.Code.NOT_FOUND, error.getStatusCode());
    assertEquals("NOT_FOUND", error.getCodeName());
    assertEquals("not found on any upstream", error.getDescription());
    assertEquals("NOT_FOUND_ON_UPSTREAMS", error.getReason());
    assertEquals(ErrorReason.NOT_FOUND_ON_UPSTREAMS, error.getReasonCode());
    assertEquals("vregistry.dev", error.getDomain());
    assertEquals(Map.of("registry_id", "r"), error.getMetadata());
    assertEquals(
        List.of(
            List.of("open", "ATTEMPT_OUTCOME_NOT_FOUND"), List.of("token", "ATTEMPT_OUTCOME_NOT_FOUND")),
        error.getAttempts().stream()
            .map(a -> List.of(a.getUpstreamId(), a.getOutcome().name()))
            .toList());
    assertEquals(
        "NOT_FOUND (NOT_FOUND_ON_UPSTREAMS): not found on any upstream", error.getMessage());
  }

  @Test
  void asyncCallsFailWithVRegistryException() {
    CompletionException wrapped =
        assertThrows(
            CompletionException.class,
            () ->
                client
                    .resolveUpstreamAsync(
                        ResolveUpstreamRequest.newBuilder()
                            .setRegistryId("r")
                            .setPath("x/manifests/latest")
                            .build(),
                        null)
                    .join());
    VRegistryException error = assertInstanceOf(VRegistryException.class, wrapped.getCause());
    assertEquals(ErrorReason.NOT_FOUND_ON_UPSTREAMS, error.getReasonCode());
    assertEquals(2, error.getAttempts().size());

    UrlForResponse reply =
        client
            .urlForAsync(
                UrlForRequest.newBuilder().setUpstreamId("open").setPath("a/b/tags/list").build(),
                Duration.ofSeconds(2))
            .join();
    assertEquals("http://upstream.test/v2/a/b/tags/list#open", reply.getUrl());
  }

  @Test
  void invalidPathIsInvalidArgument() {
    VRegistryException error =
        assertThrows(VRegistryException.class, () -> client.urlFor("open", "Bad/Path"));
    assertEquals("INVALID_ARGUMENT", error.getCodeName());
    assertEquals(ErrorReason.INVALID_PATH, error.getReasonCode());
    assertEquals(Map.of("path", "Bad/Path"), error.getMetadata());
    assertTrue(error.getAttempts().isEmpty());
  }

  @Test
  void plainErrorsWithoutDetailsDecodeToEmptyDetails() {
    VRegistryException error =
        VRegistryException.from(Status.UNAVAILABLE.withDescription("down").asRuntimeException());
    assertEquals("UNAVAILABLE", error.getCodeName());
    assertEquals("", error.getReason());
    assertEquals(Map.of(), error.getMetadata());
    assertEquals("UNAVAILABLE: down", error.getMessage());
    assertEquals(
        "UNKNOWN", VRegistryException.from(new IllegalStateException("boom")).getCodeName());
  }

  @Test
  void defaultDeadlineIsThirtySecondsAndPerCallOverridable() {
    assertEquals(Duration.ofSeconds(30), VRegistryClient.DEFAULT_DEADLINE);
    // Shares the suite's channel (not owned, so close() leaves it open).
    VRegistryClient plain = VRegistryClient.builder().channel(channel).build();
    assertEquals(Duration.ofSeconds(30), plain.defaultDeadline());
    long byDefault = Long.parseLong(plain.urlFor("deadline", "").getUrl());
    assertTrue(byDefault > 25_000 && byDefault <= 30_000, "default deadline leaves " + byDefault);
    long perCall =
        Long.parseLong(
            plain
                .urlFor(
                    UrlForRequest.newBuilder().setUpstreamId("deadline").build(),
                    Duration.ofSeconds(2))
                .getUrl());
    assertTrue(perCall > 0 && perCall <= 2_000, "per-call deadline leaves " + perCall);
    long clientWide = Long.parseLong(client.urlFor("deadline", "").getUrl()); // 5 s builder default
    assertTrue(clientWide > 3_000 && clientWide <= 5_000, "client deadline leaves " + clientWide);
    plain.close();
  }

  private static VRegistryException errorWith(String reason, String domain) {
    com.google.rpc.Status status =
        com.google.rpc.Status.newBuilder()
            .setCode(Code.FAILED_PRECONDITION_VALUE)
            .setMessage("x")
            .addDetails(
                Any.pack(ErrorInfo.newBuilder().setReason(reason).setDomain(domain).build()))
            .build();
    return VRegistryException.from(StatusProto.toStatusRuntimeException(status));
  }

  @Test
  void reasonCodeIsTheGeneratedEnumForEveryReason() {
    int count = 0;
    for (ErrorReason value : ErrorReason.values()) {
      if (value == ErrorReason.UNRECOGNIZED) {
        continue;
      }
      count++;
      assertEquals(value, errorWith(value.name(), VRegistryException.DOMAIN).getReasonCode());
    }
    assertTrue(count >= 25, "ErrorReason has " + count + " values");
    assertEquals(
        ErrorReason.UPSTREAM_REALM_REFUSED,
        errorWith("UPSTREAM_REALM_REFUSED", VRegistryException.DOMAIN).getReasonCode());
    VRegistryException newer = errorWith("SOMETHING_NEWER", VRegistryException.DOMAIN);
    assertEquals(ErrorReason.UNRECOGNIZED, newer.getReasonCode());
    assertEquals("SOMETHING_NEWER", newer.getReason());
    assertEquals(
        ErrorReason.ERROR_REASON_UNSPECIFIED,
        errorWith("NOT_FOUND", "proxy.example").getReasonCode());
    assertEquals(
        ErrorReason.ERROR_REASON_UNSPECIFIED,
        VRegistryException.from(Status.UNAVAILABLE.asRuntimeException(new Metadata()))
            .getReasonCode());
  }

  @Test
  void builderValidates() {
    assertThrows(IllegalStateException.class, () -> VRegistryClient.builder().build());
    assertThrows(
        IllegalArgumentException.class,
        () -> VRegistryClient.builder().defaultDeadline(Duration.ZERO));
    // TLS (default) and plaintext channels build without connecting.
    VRegistryClient.builder().target("127.0.0.1:1").build().close();
    VRegistryClient.builder()
        .target("127.0.0.1:1")
        .overrideAuthority("vregistry.test")
        .build()
        .close();
    VRegistryClient.builder().target("127.0.0.1:1").usePlaintext().build().close();
  }
}
