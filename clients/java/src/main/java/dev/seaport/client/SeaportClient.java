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
import io.grpc.ConnectivityState;
import io.grpc.Context;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import io.grpc.stub.ClientCallStreamObserver;
import io.grpc.stub.StreamObserver;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.Set;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;

/**
 * A connection to the Seaport registry. Reads (query, get, watch) need no session. The first write
 * (register, update, free) opens one, held by a background thread on the Heartbeat stream; it ends
 * when this client holds no registration any more, or on {@link #close()}. After the stream drops
 * the thread reconnects with exponential backoff and full jitter and resumes the same session, so
 * nothing is freed; only when the server no longer knows the session (a restart, or its ttl passed)
 * does it open a new one and re-register exactly this client's own registrations with their ids,
 * hosts and ports.
 */
public final class SeaportClient implements AutoCloseable {
  /** How long close() waits for the server to confirm that the session's registrations are freed. */
  private static final Duration CLOSE_WAIT = Duration.ofSeconds(2);
  /** How long a new Heartbeat stream waits for `opened`; the server gives up on a silent one after 10s. */
  private static final Duration OPEN_WAIT = Duration.ofSeconds(10);

  private final List<String> addresses;
  private final String namespace;
  private final Duration ttl;
  private final ChannelCredentials credentials;
  private final Duration requestTimeout = Duration.ofSeconds(10);
  /** This client's registrations, as Register re-asserts them on a new session. */
  private final Map<String, RegisterRequest> owned = new ConcurrentHashMap<>();

  // Guarded by `this`, waited on with wait/notifyAll. Writes to `closed` also hold it.
  private volatile boolean closed;
  /** The connection every call uses; null until the next call makes one (to the next address). */
  private ManagedChannel channel;
  /** Counts the channels made, so that several calls failing on one channel drop it once. */
  private long generation;
  /** Index in addresses of the next channel's server. */
  private int next;
  /** The session writes use; null while this client holds nothing. */
  private Session session;
  /** Sessions whose thread still runs, the one ending included. */
  private final Set<Session> running = new HashSet<>();

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

    /**
     * Connects to one of the servers, or throws SeaportException(UNAVAILABLE) when none accepts a
     * connection in time. Opens no session: the first register does.
     */
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
    // Clients given the same list spread over its servers.
    next = ThreadLocalRandom.current().nextInt(addresses.size());
    try {
      reach(b.connectTimeout);
    } catch (RuntimeException e) {
      close();
      throw e;
    }
  }

  // -- the connection ------------------------------------------------------------------------

  private record Conn(ManagedChannel channel, long generation) {
    RegistryGrpc.RegistryBlockingStub stub() {
      return RegistryGrpc.newBlockingStub(channel);
    }
  }

  private synchronized Conn channel() {
    if (closed) {
      throw closedError();
    }
    if (channel == null) {
      channel = Grpc.newChannelBuilder(addresses.get(next % addresses.size()), credentials).build();
      generation++;
    }
    return new Conn(channel, generation);
  }

  /** Drops a connection a call found broken, so the next call connects afresh, to the next server. */
  private void failed(Conn c) {
    ManagedChannel dead;
    synchronized (this) {
      if (c.generation() != generation || channel == null) {
        return;
      }
      dead = channel;
      channel = null;
      next++;
    }
    dead.shutdownNow();
  }

  /** Waits until one of the servers accepts a connection (TLS handshake included). */
  private void reach(Duration timeout) {
    long deadline = System.nanoTime() + timeout.toNanos();
    for (int failures = 1; ; failures++) {
      Conn c = channel();
      if (connects(c.channel(), deadline)) {
        return;
      }
      failed(c);
      long left = deadline - System.nanoTime();
      if (left <= 0) {
        throw new SeaportException(Status.Code.UNAVAILABLE, "no Seaport server reachable at " + String.join(", ", addresses));
      }
      backoff(failures, left);
    }
  }

  private static boolean connects(ManagedChannel ch, long deadline) {
    try {
      for (ConnectivityState state = ch.getState(true); state != ConnectivityState.READY; state = ch.getState(true)) {
        long left = deadline - System.nanoTime();
        if (state == ConnectivityState.TRANSIENT_FAILURE || state == ConnectivityState.SHUTDOWN || left <= 0) {
          return false;
        }
        CountDownLatch changed = new CountDownLatch(1);
        ch.notifyWhenStateChanged(state, changed::countDown);
        changed.await(left, TimeUnit.NANOSECONDS);
      }
      return true;
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new SeaportException(Status.Code.CANCELLED, "interrupted");
    }
  }

  /** A random wait up to a bound that doubles with each failure, so clients that lost a server do not return in step. */
  private static long jitterNanos(int failures) {
    long limitMs = Math.min(5000, 100L << Math.min(failures, 10));
    return TimeUnit.MILLISECONDS.toNanos(ThreadLocalRandom.current().nextLong(1, limitMs + 1));
  }

  /** Backs off before trying again (at most `most` ns); close() cuts it short. */
  private synchronized void backoff(int failures, long most) {
    long deadline = System.nanoTime() + Math.min(jitterNanos(failures), most);
    try {
      for (long left; !closed && (left = deadline - System.nanoTime()) > 0; ) {
        TimeUnit.NANOSECONDS.timedWait(this, left);
      }
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new SeaportException(Status.Code.CANCELLED, "interrupted");
    }
  }

  private static SeaportException closedError() {
    return new SeaportException(Status.Code.CANCELLED, "the client is closed");
  }

  private SeaportException error(StatusRuntimeException e) {
    return closed ? closedError() : SeaportException.of(e);
  }

  /**
   * Runs a read, connecting again (to the next server, when there are several) while the server is
   * unavailable, until timeout passes; a null timeout waits until the client is closed.
   */
  private <T> T read(Duration timeout, Function<RegistryGrpc.RegistryBlockingStub, T> call) {
    long start = System.nanoTime();
    for (int failures = 1; ; failures++) {
      Conn c = channel();
      RegistryGrpc.RegistryBlockingStub stub = c.stub();
      long left = timeout == null ? Long.MAX_VALUE : timeout.toNanos() - (System.nanoTime() - start);
      if (timeout != null) {
        stub = stub.withDeadlineAfter(Math.max(left, 0), TimeUnit.NANOSECONDS);
      }
      try {
        return call.apply(stub);
      } catch (StatusRuntimeException e) {
        if (e.getStatus().getCode() != Status.Code.UNAVAILABLE || closed) {
          throw error(e);
        }
        failed(c);
        left = timeout == null ? Long.MAX_VALUE : timeout.toNanos() - (System.nanoTime() - start);
        if (left <= 0) {
          throw error(e);
        }
        backoff(failures, left);
      }
    }
  }

  private RegistryGrpc.RegistryBlockingStub timed(RegistryGrpc.RegistryBlockingStub stub) {
    return stub.withDeadlineAfter(requestTimeout.toMillis(), TimeUnit.MILLISECONDS);
  }

  // -- the session ---------------------------------------------------------------------------

  /** The session for one write, opened if this client holds none; give it back with release. */
  private synchronized Session acquire() {
    if (closed) {
      throw closedError();
    }
    if (session == null) {
      session = new Session();
      running.add(session);
      session.thread.start();
    }
    session.writers++;
    return session;
  }

  private synchronized void release(Session s) {
    s.writers--;
    endIfIdle(s);
  }

  /** Ends the session once no write is under way and it holds nothing: sessions are for writers. */
  private synchronized void endIfIdle(Session s) {
    if (session == s && s.writers == 0 && owned.isEmpty()) {
      session = null;
      s.end();
    }
  }

  /** A session as a write uses it: its id, the connection it lives on, and which opening of it. */
  private record Held(String id, Conn conn, long opening) {}

  /** Asks the session thread to close the session. */
  private static final Object END = new Object();
  /** A Heartbeat stream's end without an error. */
  private static final Object ENDED = new Object();

  /** A message from the Heartbeat stream `stream`; replies of earlier streams are ignored. */
  private record Reply(Object stream, Object message) {}

  private static final class Lost extends Exception {}

  private static final class Dropped extends Exception {}

  private static final class Refused extends Exception {
    final SeaportException error;

    Refused(SeaportException error) {
      this.error = error;
    }
  }

  /**
   * One session and the thread that holds it: one Heartbeat stream at a time, resumed by id when
   * the stream drops, opened anew (re-asserting `owned`) only when the server answers NOT_FOUND,
   * and closed, waiting for `closed`, when END arrives.
   */
  private final class Session implements Runnable {
    final Thread thread = new Thread(this, "seaport-session");
    /** The server's messages, tagged by stream, and END; the thread's only source of wake-ups. */
    private final BlockingQueue<Object> inbox = new LinkedBlockingQueue<>();
    // Only the session thread uses these.
    /** The session id to resume; null until the first `opened`, and after NOT_FOUND. */
    private String known;
    private boolean ending;

    // Guarded by SeaportClient.this.
    /** Writes under way. */
    int writers;
    /** Set while a Heartbeat stream holds the session. */
    private Held held;
    /** Counts sessions opened (not resumed), so that a register racing a re-open can tell. */
    private long openings;
    /** Why the session cannot be held (no or a refused certificate); final. */
    private SeaportException refused;
    private boolean over;

    Session() {
      thread.setDaemon(true);
    }

    void end() {
      inbox.add(END);
    }

    /** Waits until a stream holds the session. */
    Held await(Duration timeout) {
      synchronized (SeaportClient.this) {
        long deadline = System.nanoTime() + timeout.toNanos();
        for (long left; held == null && refused == null && !over && !closed && (left = deadline - System.nanoTime()) > 0; ) {
          try {
            TimeUnit.NANOSECONDS.timedWait(SeaportClient.this, left);
          } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new SeaportException(Status.Code.CANCELLED, "interrupted");
          }
        }
        if (refused != null) {
          throw refused;
        }
        if (closed || over) {
          throw closedError();
        }
        if (held == null) {
          throw new SeaportException(Status.Code.UNAVAILABLE, "no session with a Seaport server at " + String.join(", ", addresses));
        }
        return held;
      }
    }

    /** Registers `request` again when a new session was opened after `at` was held, which re-asserted only what it saw. */
    void catchUp(Held at, RegisterRequest request) {
      synchronized (SeaportClient.this) {
        if (openings == at.opening()) {
          return;
        }
      }
      Held now = await(requestTimeout);
      try {
        timed(now.conn().stub()).register(request.toBuilder().setSessionId(now.id()).build());
      } catch (StatusRuntimeException e) {
        // as in reassert: another process may hold the port now
      }
    }

    @Override
    public void run() {
      try {
        for (int failures = 1; !ending; failures++) {
          Conn c;
          try {
            c = channel();
          } catch (SeaportException e) {
            return; // the client is closed
          }
          try {
            hold(c);
            return;
          } catch (Lost e) {
            known = null;
            failures = 0;
            continue;
          } catch (Refused e) {
            synchronized (SeaportClient.this) {
              refused = e.error;
            }
            return;
          } catch (Dropped | RuntimeException e) {
            // a broken connection: back off, then resume on the next server
          }
          failed(c);
          if (!ending && rest(failures)) {
            return;
          }
        }
      } catch (InterruptedException e) {
        // close() gave up waiting
      } finally {
        synchronized (SeaportClient.this) {
          over = true;
          held = null;
          running.remove(this);
          if (session == this) {
            session = null;
          }
          SeaportClient.this.notifyAll();
        }
      }
    }

    /** Backs off; true when END arrived meanwhile. */
    private boolean rest(int failures) throws InterruptedException {
      long deadline = System.nanoTime() + jitterNanos(failures);
      for (Object m; (m = take(this, deadline)) != null; ) {
        if (m == END) {
          return true;
        }
      }
      return false;
    }

    /** The next message of `stream`, END, or null once the deadline passes. */
    private Object take(Object stream, long deadline) throws InterruptedException {
      while (true) {
        long left = deadline - System.nanoTime();
        Object m = left > 0 ? inbox.poll(left, TimeUnit.NANOSECONDS) : inbox.poll();
        if (m == null || m == END) {
          return m;
        }
        if (((Reply) m).stream() == stream) {
          return ((Reply) m).message();
        }
      }
    }

    /** Holds the session on one Heartbeat stream until END (returns) or the stream fails (throws). */
    private void hold(Conn c) throws Lost, Dropped, Refused, InterruptedException {
      Object stream = new Object();
      ClientCallStreamObserver<HeartbeatRequest> out = (ClientCallStreamObserver<HeartbeatRequest>)
          RegistryGrpc.newStub(c.channel()).heartbeat(new StreamObserver<>() {
            @Override public void onNext(HeartbeatResponse r) { inbox.add(new Reply(stream, r)); }
            @Override public void onError(Throwable t) { inbox.add(new Reply(stream, t)); }
            @Override public void onCompleted() { inbox.add(new Reply(stream, ENDED)); }
          });
      boolean finished = false;
      try {
        out.onNext(known != null
            ? HeartbeatRequest.newBuilder().setResume(ResumeSession.newBuilder().setSessionId(known)).build()
            : HeartbeatRequest.newBuilder().setOpen(OpenSession.newBuilder().setTtlMs(ttl.toMillis()).setClientName("seaport-java")).build());
        long deadline = System.nanoTime() + OPEN_WAIT.toNanos();
        Object first;
        while ((first = take(stream, deadline)) == END) {
          // Closing before the session is open: wait briefly for it, then close it at once.
          ending = true;
          deadline = Math.min(deadline, System.nanoTime() + CLOSE_WAIT.toNanos());
        }
        if (first instanceof Throwable t) {
          Status.Code code = Status.fromThrowable(t).getCode();
          if (code == Status.Code.NOT_FOUND && known != null) {
            throw new Lost();
          }
          if (code == Status.Code.UNAUTHENTICATED || code == Status.Code.PERMISSION_DENIED) {
            throw new Refused(SeaportException.of(Status.fromThrowable(t).asRuntimeException()));
          }
        }
        if (!(first instanceof HeartbeatResponse r) || !r.hasOpened()) {
          throw new Dropped();
        }
        SessionOpened opened = r.getOpened();
        known = opened.getSessionId();
        if (ending) {
          finished = closeSession(out, stream);
          return;
        }
        Held h;
        synchronized (SeaportClient.this) {
          if (!opened.getResumed()) {
            openings++;
          }
          held = h = new Held(known, c, openings);
          SeaportClient.this.notifyAll();
        }
        if (!opened.getResumed()) {
          reassert(h);
        }
        long ttlNanos = TimeUnit.MILLISECONDS.toNanos(opened.getTtlMs());
        long interval = Math.max(ttlNanos / 3, TimeUnit.MILLISECONDS.toNanos(50));
        long heard = System.nanoTime();
        long ping = heard + interval;
        for (long seq = 1; ; ) {
          Object m = take(stream, ping);
          if (m == END) {
            ending = true;
            finished = closeSession(out, stream);
            return;
          }
          if (m == null) {
            if (System.nanoTime() - heard > ttlNanos) {
              throw new Dropped(); // no pong for a whole ttl: the connection is dead without saying so
            }
            out.onNext(HeartbeatRequest.newBuilder().setPing(Ping.newBuilder().setSeq(seq++)).build());
            ping = System.nanoTime() + interval;
            continue;
          }
          heard = System.nanoTime();
          if (m instanceof HeartbeatResponse response) {
            if (response.hasEvicted()) {
              evicted(response.getEvicted().getId());
            }
            continue;
          }
          if (m instanceof Throwable t && Status.fromThrowable(t).getCode() == Status.Code.NOT_FOUND) {
            throw new Lost();
          }
          throw new Dropped();
        }
      } finally {
        synchronized (SeaportClient.this) {
          held = null;
        }
        if (!finished) {
          out.cancel("the session moves to a new stream", null);
        }
      }
    }

    /** Sends `close` and waits (bounded) for `closed`, so the registrations are gone when close() returns. */
    private boolean closeSession(ClientCallStreamObserver<HeartbeatRequest> out, Object stream) throws InterruptedException {
      out.onNext(HeartbeatRequest.newBuilder().setClose(CloseSession.getDefaultInstance()).build());
      long deadline = System.nanoTime() + CLOSE_WAIT.toNanos();
      for (Object m; (m = take(stream, deadline)) != null; ) {
        if (m instanceof HeartbeatResponse r && r.hasClosed()) {
          known = null;
          out.onCompleted();
          return true;
        }
        if (m instanceof HeartbeatResponse r && r.hasEvicted()) {
          owned.remove(r.getEvicted().getId());
        } else if (m != END && !(m instanceof HeartbeatResponse)) {
          return false; // the stream failed
        }
      }
      return false;
    }

    /** An admin freed a registration of this session's: final, so it is forgotten, never re-asserted. */
    private void evicted(String id) {
      owned.remove(id);
      endIfIdle(this);
    }

    private void reassert(Held h) {
      RegistryGrpc.RegistryBlockingStub stub = h.conn().stub();
      for (RegisterRequest r : owned.values()) {
        try {
          timed(stub).register(r.toBuilder().setSessionId(h.id()).build());
        } catch (StatusRuntimeException e) {
          // another process may hold the port now; the rest still go back
        }
      }
    }
  }

  // -- calls ---------------------------------------------------------------------------------

  /** Registers role ("name@1.2.3") under this client's session, opening it if this is its first registration. */
  public Registration register(String role, RegisterOptions options) {
    Session s = acquire();
    try {
      Held h = s.await(requestTimeout);
      RegisterRequest request = RegisterRequest.newBuilder().setSessionId(h.id()).setRole(role).setNamespace(namespace)
          .setHost(options.host).setPort(options.port).setId(options.id).putAllMetadata(options.metadata).build();
      Service service;
      try {
        service = Service.of(timed(h.conn().stub()).register(request).getService());
      } catch (StatusRuntimeException e) {
        throw error(e);
      }
      RegisterRequest kept = request.toBuilder().setId(service.id()).setHost(service.host()).setPort(service.port()).build();
      owned.put(service.id(), kept);
      s.catchUp(h, kept);
      return new Registration(service.id(), service.host(), service.port(), service);
    } finally {
      release(s);
    }
  }

  /** Replaces (or, with merge, merges into) a registration's metadata. */
  public Service update(String id, Map<String, String> metadata, boolean merge) {
    Session s = acquire();
    try {
      Held h = s.await(requestTimeout);
      Service service = Service.of(timed(h.conn().stub()).update(UpdateRequest.newBuilder().setSessionId(h.id()).setId(id)
          .putAllMetadata(metadata).setMerge(merge).build()).getService());
      owned.computeIfPresent(id, (k, r) -> r.toBuilder().clearMetadata().putAllMetadata(service.metadata()).build());
      return service;
    } catch (StatusRuntimeException e) {
      throw error(e);
    } finally {
      release(s);
    }
  }

  /** Frees a registration; freeing this client's last one ends its session. */
  public void free(String id) {
    Session s = acquire();
    try {
      Held h = s.await(requestTimeout);
      timed(h.conn().stub()).free(FreeRequest.newBuilder().setSessionId(h.id()).setId(id).build());
      owned.remove(id);
    } catch (StatusRuntimeException e) {
      if (e.getStatus().getCode() == Status.Code.NOT_FOUND) {
        owned.remove(id);
      }
      throw error(e);
    } finally {
      release(s);
    }
  }

  /** The services matching "name", "name@range" or "" now. */
  public List<Service> query(String pattern) {
    QueryRequest request = QueryRequest.newBuilder().setPattern(pattern).setNamespace(namespace).build();
    return read(requestTimeout, stub -> stub.query(request).getServicesList().stream().map(Service::of).toList());
  }

  /** Waits until something matches; with a timeout, throws SeaportException(DEADLINE_EXCEEDED) when it passes. */
  public List<Service> get(String pattern, Duration timeout) {
    GetRequest request = GetRequest.newBuilder().setPattern(pattern).setNamespace(namespace).build();
    return read(timeout, stub -> stub.get(request).getServicesList().stream().map(Service::of).toList());
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
    private Conn conn;
    private long since;
    private int failures;

    private Watch(String pattern) {
      this.pattern = pattern;
      open();
    }

    private void open() {
      conn = channel();
      dev.seaport.v1.WatchRequest request = dev.seaport.v1.WatchRequest.newBuilder().setPattern(pattern)
          .setNamespace(namespace).setSinceRevision(since).build();
      Context previous = context.attach();
      try {
        stream = conn.stub().watch(request);
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
            throw error(e);
          }
          failed(conn);
          backoff(++failures, Long.MAX_VALUE);
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
      failures = 0;
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

  /**
   * Ends the session, if any, and waits (up to 2s) for the server to confirm that its registrations
   * are freed; then closes the connection, ending watches and waiting calls.
   */
  @Override
  public void close() {
    List<Session> ending;
    synchronized (this) {
      if (closed) {
        return;
      }
      closed = true;
      session = null;
      ending = new ArrayList<>(running);
      notifyAll();
    }
    ending.forEach(Session::end);
    join(ending, CLOSE_WAIT.plusMillis(500));
    ManagedChannel last;
    synchronized (this) {
      last = channel;
      channel = null;
    }
    if (last != null) {
      last.shutdownNow(); // ends a session thread stuck in a call, too
    }
    ending.forEach(s -> s.thread.interrupt());
    join(ending, Duration.ofSeconds(1));
  }

  private static void join(List<Session> sessions, Duration timeout) {
    long deadline = System.nanoTime() + timeout.toNanos();
    for (Session s : sessions) {
      if (s.thread == Thread.currentThread()) {
        continue;
      }
      try {
        s.thread.join(Math.max(TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime()), 1));
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        return;
      }
    }
  }
}
