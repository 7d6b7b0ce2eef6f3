package dev.seaport.client;

import dev.seaport.v1.CloseSession;
import dev.seaport.v1.FreeRequest;
import dev.seaport.v1.GetRequest;
import dev.seaport.v1.HeartbeatRequest;
import dev.seaport.v1.HeartbeatResponse;
import dev.seaport.v1.OpenSession;
import dev.seaport.v1.Ping;
import dev.seaport.v1.QueryRequest;
import dev.seaport.v1.RegisterRequest;
import dev.seaport.v1.RegistryGrpc;
import dev.seaport.v1.ResumeSession;
import dev.seaport.v1.SessionOpened;
import dev.seaport.v1.UpdateRequest;
import io.grpc.ChannelCredentials;
import io.grpc.Context;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import io.grpc.stub.StreamObserver;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;

/**
 * A connection to the Seaport registry holding one session, kept alive by a background thread that
 * reconnects with exponential backoff and full jitter, resumes the session, and, when the server no
 * longer knows it (a restart), opens a new one and re-registers exactly this client's own
 * registrations with their ids, hosts and ports.
 */
public final class SeaportClient implements AutoCloseable {
  private final List<String> addresses;
  private final String namespace;
  private final Duration ttl;
  private final ChannelCredentials credentials;
  private final Duration requestTimeout = Duration.ofSeconds(10);
  private final Map<String, RegisterRequest> owned = new ConcurrentHashMap<>();
  private final Thread sessionThread;
  private volatile boolean closed;

  // The current connection; guarded by `this`, waited on with wait/notifyAll.
  private ManagedChannel channel;
  private String sessionId;
  private long generation;
  private SeaportException fatal;

  /** Builds a client. */
  public static Builder builder() {
    return new Builder();
  }

  /** Settings of a {@link SeaportClient}. */
  public static final class Builder {
    private final List<String> addresses = new ArrayList<>();
    private String namespace = "";
    private Duration ttl = Duration.ZERO;
    private Duration connectTimeout = Duration.ofSeconds(10);
    private ChannelCredentials credentials = InsecureChannelCredentials.create();

    /** A server address, host:port; several give failover. */
    public Builder address(String address) {
      addresses.add(address);
      return this;
    }

    public Builder namespace(String namespace) {
      this.namespace = namespace;
      return this;
    }

    /** The session ttl to ask for; without it the server's --default-ttl applies. */
    public Builder ttl(Duration ttl) {
      this.ttl = ttl;
      return this;
    }

    public Builder connectTimeout(Duration timeout) {
      this.connectTimeout = timeout;
      return this;
    }

    /** TLS trusting caPem; certPem and keyPem (PKCS#8), may be null, are the client certificate for mTLS. */
    public Builder tls(byte[] caPem, byte[] certPem, byte[] keyPem) {
      try {
        TlsChannelCredentials.Builder tls = TlsChannelCredentials.newBuilder().trustManager(new ByteArrayInputStream(caPem));
        if (certPem != null) {
          tls.keyManager(new ByteArrayInputStream(certPem), new ByteArrayInputStream(keyPem));
        }
        this.credentials = tls.build();
      } catch (IOException e) {
        throw new IllegalArgumentException("unreadable TLS material: " + e.getMessage(), e);
      }
      return this;
    }

    /** Connects and opens the session, or throws SeaportException when no server answers in time. */
    public SeaportClient connect() {
      if (addresses.isEmpty()) {
        throw new IllegalArgumentException("give at least one server address");
      }
      return new SeaportClient(this);
    }
  }

  private SeaportClient(Builder b) {
    addresses = List.copyOf(b.addresses);
    namespace = b.namespace;
    ttl = b.ttl;
    credentials = b.credentials;
    sessionThread = new Thread(this::run, "seaport-session");
    sessionThread.setDaemon(true);
    sessionThread.start();
    try {
      current(b.connectTimeout);
    } catch (SeaportException e) {
      close();
      throw e;
    }
  }

  // -- the session thread --------------------------------------------------------------------

  private static final class SessionLost extends Exception {}

  private void run() {
    String session = null;
    int failures = 0;
    for (int i = 0; !closed; i++) {
      String address = addresses.get(i % addresses.size());
      try {
        hold(address, session);
        return;
      } catch (SessionLost e) {
        session = null;
        continue;
      } catch (ResumableFailure e) {
        session = e.session;
      } catch (RuntimeException | InterruptedException e) {
        // a broken connection: back off and try the next server
      }
      publish(null, null, null);
      failures++;
      // Full jitter: spread reconnects so clients do not return in step.
      long limit = Math.min(5000, 100L << Math.min(failures, 10));
      sleep(ThreadLocalRandom.current().nextLong(limit));
    }
  }

  private static final class ResumableFailure extends Exception {
    final String session;

    ResumableFailure(String session) {
      this.session = session;
    }
  }

  private void sleep(long ms) {
    synchronized (this) {
      try {
        if (!closed) {
          wait(Math.max(ms, 1));
        }
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      }
    }
  }

  private synchronized void publish(ManagedChannel ch, String session, SeaportException error) {
    channel = ch;
    sessionId = session;
    if (ch != null) {
      generation++;
    }
    if (error != null) {
      fatal = error;
    }
    notifyAll();
  }

  private void hold(String address, String session) throws SessionLost, ResumableFailure, InterruptedException {
    ManagedChannel ch = Grpc.newChannelBuilder(address, credentials).build();
    BlockingQueue<Object> replies = new LinkedBlockingQueue<>();
    try {
      StreamObserver<HeartbeatRequest> out = RegistryGrpc.newStub(ch).heartbeat(new StreamObserver<>() {
        @Override public void onNext(HeartbeatResponse r) { replies.add(r); }
        @Override public void onError(Throwable t) { replies.add(t); }
        @Override public void onCompleted() { replies.add(Status.UNAVAILABLE.withDescription("stream ended").asRuntimeException()); }
      });
      out.onNext(session != null
          ? HeartbeatRequest.newBuilder().setResume(ResumeSession.newBuilder().setSessionId(session)).build()
          : HeartbeatRequest.newBuilder().setOpen(OpenSession.newBuilder().setTtlMs(ttl.toMillis()).setClientName("seaport-java")).build());
      Object first = replies.poll(10, TimeUnit.SECONDS);
      if (first instanceof StatusRuntimeException e) {
        Status.Code code = e.getStatus().getCode();
        if (code == Status.Code.NOT_FOUND && session != null) {
          throw new SessionLost();
        }
        if (code == Status.Code.UNAUTHENTICATED || code == Status.Code.PERMISSION_DENIED) {
          publish(null, null, SeaportException.of(e));
          closed = true;
          return;
        }
        throw new ResumableFailure(session);
      }
      if (!(first instanceof HeartbeatResponse r) || !r.hasOpened()) {
        throw new ResumableFailure(session);
      }
      SessionOpened opened = r.getOpened();
      if (!opened.getResumed()) {
        reassert(ch, opened.getSessionId());
      }
      publish(ch, opened.getSessionId(), null);
      long interval = Math.max(opened.getTtlMs() / 3, 50);
      for (long seq = 1; ; seq++) {
        Object reply = replies.poll(interval, TimeUnit.MILLISECONDS);
        if (closed) {
          out.onNext(HeartbeatRequest.newBuilder().setClose(CloseSession.getDefaultInstance()).build());
          replies.poll(5, TimeUnit.SECONDS);
          out.onCompleted();
          return;
        }
        if (reply == null) {
          out.onNext(HeartbeatRequest.newBuilder().setPing(Ping.newBuilder().setSeq(seq)).build());
        } else if (reply instanceof StatusRuntimeException e) {
          if (e.getStatus().getCode() == Status.Code.NOT_FOUND) {
            throw new SessionLost();
          }
          throw new ResumableFailure(opened.getSessionId());
        }
      }
    } finally {
      ch.shutdownNow();
    }
  }

  private void reassert(ManagedChannel ch, String session) {
    RegistryGrpc.RegistryBlockingStub stub = RegistryGrpc.newBlockingStub(ch);
    for (RegisterRequest r : owned.values()) {
      try {
        stub.withDeadlineAfter(requestTimeout.toMillis(), TimeUnit.MILLISECONDS).register(r.toBuilder().setSessionId(session).build());
      } catch (StatusRuntimeException e) {
        // another process may hold the port now; the rest still go back
      }
    }
  }

  // -- calls ---------------------------------------------------------------------------------

  private record Conn(RegistryGrpc.RegistryBlockingStub stub, String session, long generation) {}

  private synchronized Conn current(Duration timeout) {
    long deadline = System.nanoTime() + timeout.toNanos();
    while (channel == null && fatal == null && !closed) {
      long left = deadline - System.nanoTime();
      if (left <= 0) {
        throw new SeaportException(Status.Code.UNAVAILABLE, "no Seaport server reachable at " + String.join(", ", addresses));
      }
      try {
        TimeUnit.NANOSECONDS.timedWait(this, left);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw new SeaportException(Status.Code.CANCELLED, "interrupted");
      }
    }
    if (fatal != null) {
      throw fatal;
    }
    if (channel == null) {
      throw new SeaportException(Status.Code.CANCELLED, "the client is closed");
    }
    return new Conn(RegistryGrpc.newBlockingStub(channel), sessionId, generation);
  }

  private Conn current() {
    return current(requestTimeout);
  }

  private synchronized void awaitNew(long gen) {
    long deadline = System.nanoTime() + requestTimeout.toNanos();
    while (generation == gen && !closed && System.nanoTime() < deadline) {
      try {
        TimeUnit.NANOSECONDS.timedWait(this, Math.max(deadline - System.nanoTime(), 1));
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        return;
      }
    }
  }

  private RegistryGrpc.RegistryBlockingStub timed(RegistryGrpc.RegistryBlockingStub stub) {
    return stub.withDeadlineAfter(requestTimeout.toMillis(), TimeUnit.MILLISECONDS);
  }

  /** Registers role ("name@1.2.3") under this client's session. */
  public Registration register(String role, RegisterOptions options) {
    Conn c = current();
    RegisterRequest request = RegisterRequest.newBuilder().setSessionId(c.session()).setRole(role).setNamespace(namespace)
        .setHost(options.host).setPort(options.port).setId(options.id).putAllMetadata(options.metadata).build();
    try {
      Service s = Service.of(timed(c.stub()).register(request).getService());
      owned.put(s.id(), request.toBuilder().setId(s.id()).setHost(s.host()).setPort(s.port()).build());
      return new Registration(s.id(), s.host(), s.port(), s);
    } catch (StatusRuntimeException e) {
      throw SeaportException.of(e);
    }
  }

  /** Replaces (or, with merge, merges into) a registration's metadata. */
  public Service update(String id, Map<String, String> metadata, boolean merge) {
    Conn c = current();
    try {
      Service s = Service.of(timed(c.stub()).update(UpdateRequest.newBuilder().setSessionId(c.session()).setId(id)
          .putAllMetadata(metadata).setMerge(merge).build()).getService());
      owned.computeIfPresent(id, (k, r) -> r.toBuilder().clearMetadata().putAllMetadata(s.metadata()).build());
      return s;
    } catch (StatusRuntimeException e) {
      throw SeaportException.of(e);
    }
  }

  /** Frees a registration. */
  public void free(String id) {
    Conn c = current();
    try {
      timed(c.stub()).free(FreeRequest.newBuilder().setSessionId(c.session()).setId(id).build());
      owned.remove(id);
    } catch (StatusRuntimeException e) {
      if (e.getStatus().getCode() == Status.Code.NOT_FOUND) {
        owned.remove(id);
      }
      throw SeaportException.of(e);
    }
  }

  /** The services matching "name", "name@range" or "" now. */
  public List<Service> query(String pattern) {
    Conn c = current();
    try {
      return timed(c.stub()).query(QueryRequest.newBuilder().setPattern(pattern).setNamespace(namespace).build())
          .getServicesList().stream().map(Service::of).toList();
    } catch (StatusRuntimeException e) {
      throw SeaportException.of(e);
    }
  }

  /** Waits until something matches; with a timeout, throws SeaportException(DEADLINE_EXCEEDED) when it passes. */
  public List<Service> get(String pattern, Duration timeout) {
    while (true) {
      Conn c = current();
      RegistryGrpc.RegistryBlockingStub stub = timeout == null ? c.stub() : c.stub().withDeadlineAfter(timeout.toMillis(), TimeUnit.MILLISECONDS);
      try {
        return stub.get(GetRequest.newBuilder().setPattern(pattern).setNamespace(namespace).build())
            .getServicesList().stream().map(Service::of).toList();
      } catch (StatusRuntimeException e) {
        if (timeout == null && e.getStatus().getCode() == Status.Code.UNAVAILABLE && !closed) {
          awaitNew(c.generation());
          continue;
        }
        throw SeaportException.of(e);
      }
    }
  }

  /** A watch: an iterator over events that survives reconnects; close it to stop. */
  public Watch watch(String pattern) {
    return new Watch(pattern);
  }

  /** The events of one watch: EXISTING..., SYNCED, then every change. */
  public final class Watch implements Iterator<WatchEvent>, AutoCloseable {
    private final String pattern;
    private final Context.CancellableContext context = Context.current().withCancellation();
    private Iterator<dev.seaport.v1.WatchEvent> stream;
    private long since;
    private long gen;

    private Watch(String pattern) {
      this.pattern = pattern;
      open();
    }

    private void open() {
      Conn c = current();
      gen = c.generation();
      dev.seaport.v1.WatchRequest request = dev.seaport.v1.WatchRequest.newBuilder().setPattern(pattern)
          .setNamespace(namespace).setSinceRevision(since).build();
      Context previous = context.attach();
      try {
        stream = c.stub().watch(request);
      } finally {
        context.detach(previous);
      }
    }

    @Override
    public boolean hasNext() {
      while (true) {
        try {
          return stream.hasNext();
        } catch (StatusRuntimeException e) {
          Status.Code code = e.getStatus().getCode();
          if (context.isCancelled() || closed || (code != Status.Code.UNAVAILABLE && code != Status.Code.CANCELLED)) {
            throw SeaportException.of(e);
          }
          awaitNew(gen);
          open();
        }
      }
    }

    @Override
    public WatchEvent next() {
      if (!hasNext()) {
        throw new NoSuchElementException();
      }
      dev.seaport.v1.WatchEvent e = stream.next();
      String kind = e.getKind().name();
      if (!kind.equals("EXISTING") && !kind.equals("RESET")) {
        since = e.getRevision();
      }
      return new WatchEvent(kind, e.hasService() ? Service.of(e.getService()) : null, e.getRevision());
    }

    @Override
    public void close() {
      context.cancel(null);
    }
  }

  /** Ends the session, freeing its registrations. */
  @Override
  public void close() {
    synchronized (this) {
      closed = true;
      notifyAll();
    }
    if (Thread.currentThread() != sessionThread) {
      try {
        sessionThread.join(5000);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
      }
    }
  }
}
