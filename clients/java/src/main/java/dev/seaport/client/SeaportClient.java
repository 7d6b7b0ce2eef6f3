package dev.seaport.client;

import dev.seaport.v1.CloseSession;
import dev.seaport.v1.DrainRequest;
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
import java.net.BindException;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashSet;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.Set;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.function.Function;

/**
 * A connection to the Seaport registry. Reads (query, get, watch, catalog) need no session. The
 * first write (register, bind, update, free) opens one, held by a background thread on the
 * Heartbeat stream; it ends when this client holds no registration any more, or on {@link
 * #close()}. After the stream drops, or hears no answer for half the ttl, the thread reconnects
 * with exponential backoff and full jitter, to the next server when several are given, and resumes
 * the same session, so nothing is freed; only when the server no longer knows the session (a
 * restart, or its ttl passed) does it open a new one and re-register exactly this client's own
 * registrations with their ids, hosts and ports. {@link #events()} tells what happens.
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
  /** The ids in owned that this client drained: drained again when re-asserted. */
  private final Set<String> drained = ConcurrentHashMap.newKeySet();
  /** How long close() leaves its drained registrations in place; zero: no drain. */
  private final Duration drainWait;
  private final List<ClientEvents> subscribers = new CopyOnWriteArrayList<>();

  // Guarded by `this`, waited on with wait/notifyAll. Writes to `closed` also hold it.
  private volatile boolean closed;
  /** The connection every call uses; null until the next call makes one (to the next address). */
  private ManagedChannel channel;
  /** The address channel connects to. */
  private String channelAddress;
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
    private boolean inOrder;
    private Duration drainWait = Duration.ZERO;

    /** A server address, host:port; several give failover. */
    public Builder address(String address) {
      addresses.add(address);
      return this;
    }

    /**
     * Tries the addresses in the order given, from the first, rather than from a random one (which
     * spreads clients given the same list over its servers): a preferred server and its fallbacks.
     */
    public Builder inOrder() {
      this.inOrder = true;
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

    /**
     * Makes close() graceful: it first drains every registration of this client (so that catalogs
     * stop picking them and gets stop answering them), waits this long for traffic under way to
     * finish, then closes. Zero (the default) closes at once.
     */
    public Builder drainWait(Duration wait) {
      if (wait.isNegative()) {
        throw new IllegalArgumentException("drainWait must not be negative, got " + wait);
      }
      this.drainWait = wait;
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
    drainWait = b.drainWait;
    // Clients given the same list spread over its servers.
    next = b.inOrder ? 0 : ThreadLocalRandom.current().nextInt(addresses.size());
    try {
      reach(b.connectTimeout);
    } catch (RuntimeException e) {
      close();
      throw e;
    }
  }

  // -- the connection ------------------------------------------------------------------------

  private record Conn(ManagedChannel channel, String address, long generation) {
    RegistryGrpc.RegistryBlockingStub stub() {
      return RegistryGrpc.newBlockingStub(channel);
    }
  }

  private synchronized Conn channel() {
    if (closed) {
      throw closedError();
    }
    if (channel == null) {
      channelAddress = addresses.get(next % addresses.size());
      channel = Grpc.newChannelBuilder(channelAddress, credentials).build();
      generation++;
    }
    return new Conn(channel, channelAddress, generation);
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

  /** The server no longer knows the session: its registrations are gone. */
  private static final class Lost extends Exception {
    Lost() {
      super(null, null, false, false);
    }
  }

  /**
   * The stream failed, or its path went silent; wasUp when it had held the session; stopping when
   * the server said it is shutting down, so the next server is tried at once.
   */
  private static final class Dropped extends Exception {
    final boolean wasUp;
    final boolean stopping;

    Dropped(String reason, boolean wasUp) {
      this(reason, wasUp, false);
    }

    Dropped(String reason, boolean wasUp, boolean stopping) {
      super(reason, null, false, false);
      this.wasUp = wasUp;
      this.stopping = stopping;
    }

    static Dropped stopping(boolean wasUp) {
      return new Dropped("the server is stopping", wasUp, true);
    }
  }

  private static final class Refused extends Exception {
    final SeaportException error;

    Refused(SeaportException error) {
      super(null, null, false, false);
      this.error = error;
    }
  }

  private static String describe(Throwable t) {
    Status status = Status.fromThrowable(t);
    return status.getCode() + (status.getDescription() == null ? "" : ": " + status.getDescription());
  }

  /**
   * One session and the thread that holds it: one Heartbeat stream at a time, resumed by id when
   * the stream drops or its path goes silent, opened anew (re-asserting `owned`) only when the
   * server answers NOT_FOUND, and closed, waiting for `closed`, when END arrives.
   */
  private final class Session implements Runnable {
    final Thread thread = new Thread(this, "seaport-session");
    /** The server's messages, tagged by stream, and END; the thread's only source of wake-ups. */
    private final BlockingQueue<Object> inbox = new LinkedBlockingQueue<>();
    // Only the session thread uses these.
    /** The session id to resume; null until the first `opened`, and after NOT_FOUND. */
    private String known;
    /** The ttl the server granted the session, in ns. */
    private long ttlNanos;
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
        for (int failures = 0; !ending; ) {
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
            lost();
            failures = 0;
            continue;
          } catch (Refused e) {
            synchronized (SeaportClient.this) {
              refused = e.error;
            }
            return;
          } catch (Dropped e) {
            if (e.wasUp) {
              failures = 0;
              emit(new ClientEvent.Disconnected(c.address(), e.getMessage()));
            }
            if (e.stopping && e.wasUp && addresses.size() > 1) {
              failed(c); // the server that held the session is going: resume at the next one now
              continue;
            }
          } catch (RuntimeException e) {
            // a broken connection: back off, then resume on the next server
          }
          failed(c);
          if (!ending && rest(++failures)) {
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

    /** The server forgot the session, and with it every registration: a new one re-asserts them. */
    private void lost() {
      known = null;
      for (String id : owned.keySet()) {
        emit(new ClientEvent.Freed(id, FreeReason.EXPIRED));
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
        // A resume not answered within half the ttl meets a dead path too: the next server may still make it in time.
        long wait = known != null ? Math.min(OPEN_WAIT.toNanos(), ttlNanos / 2) : OPEN_WAIT.toNanos();
        long deadline = System.nanoTime() + wait;
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
          throw new Dropped(describe(t), false);
        }
        if (first instanceof HeartbeatResponse r && r.hasStopping()) {
          throw Dropped.stopping(false);
        }
        if (!(first instanceof HeartbeatResponse r) || !r.hasOpened()) {
          throw new Dropped(first == null ? "no answer to " + (known != null ? "resume" : "open") : "no `opened` first", false);
        }
        SessionOpened opened = r.getOpened();
        known = opened.getSessionId();
        ttlNanos = TimeUnit.MILLISECONDS.toNanos(Math.max(opened.getTtlMs(), 1));
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
        if (opened.getResumed()) {
          emit(new ClientEvent.Resumed(c.address()));
        } else {
          emit(new ClientEvent.Connected(c.address(), opened.getObservedHost()));
          reassert(h);
        }
        // Pings go every third of the ttl, and each is answered after a round trip: no answer for
        // half the ttl is a dead path, declared while the server still holds the session, so that
        // it can be resumed over the next address before the ttl passes.
        long interval = Math.max(ttlNanos / 3, TimeUnit.MILLISECONDS.toNanos(50));
        long dead = ttlNanos / 2;
        long heard = System.nanoTime();
        long ping = heard + interval;
        for (long seq = 1; ; ) {
          Object m = take(stream, Math.min(ping, heard + dead));
          long now = System.nanoTime();
          if (m == END) {
            ending = true;
            finished = closeSession(out, stream);
            return;
          }
          if (m == null) {
            if (now - heard >= dead) {
              throw new Dropped("no answer for half the session ttl (" + TimeUnit.NANOSECONDS.toMillis(dead) + " ms)", true);
            }
            if (now - ping >= 0) {
              out.onNext(HeartbeatRequest.newBuilder().setPing(Ping.newBuilder().setSeq(seq++)).build());
              ping = now + interval;
            }
            continue;
          }
          heard = now;
          if (m instanceof HeartbeatResponse response) {
            if (response.hasEvicted()) {
              evicted(response.getEvicted().getId(), response.getEvicted().getBy());
            } else if (response.hasStopping()) {
              throw Dropped.stopping(true);
            }
            continue;
          }
          if (m instanceof Throwable t && Status.fromThrowable(t).getCode() == Status.Code.NOT_FOUND) {
            throw new Lost();
          }
          throw new Dropped(m instanceof Throwable t ? describe(t) : "the server ended the session stream", true);
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
          for (String id : owned.keySet()) {
            emit(new ClientEvent.Freed(id, FreeReason.CLOSED));
          }
          return true;
        }
        if (m instanceof HeartbeatResponse r && r.hasEvicted()) {
          forgetEvicted(r.getEvicted().getId(), r.getEvicted().getBy());
        } else if (m != END && !(m instanceof HeartbeatResponse)) {
          return false; // the stream failed
        }
      }
      return false;
    }

    /** An admin freed a registration of this session's: final, so it is forgotten, never re-asserted. */
    private void evicted(String id, String by) {
      forgetEvicted(id, by);
      endIfIdle(this);
    }

    private void forgetEvicted(String id, String by) {
      drained.remove(id);
      if (owned.remove(id) != null) {
        emit(new ClientEvent.Freed(id, FreeReason.ADMIN));
        emit(new ClientEvent.Evicted(id, by));
      }
    }

    private void reassert(Held h) {
      if (owned.isEmpty()) {
        return;
      }
      RegistryGrpc.RegistryBlockingStub stub = h.conn().stub();
      int count = 0;
      Map<String, String> failed = new LinkedHashMap<>();
      for (RegisterRequest r : owned.values()) {
        try {
          timed(stub).register(r.toBuilder().setSessionId(h.id()).build());
          if (drained.contains(r.getId())) {
            timed(stub).drain(DrainRequest.newBuilder().setSessionId(h.id()).setId(r.getId()).build());
          }
          count++;
        } catch (StatusRuntimeException e) {
          // another process may hold the port now; the rest still go back
          failed.put(r.getId(), describe(e));
        }
      }
      emit(new ClientEvent.Reasserted(count, Map.copyOf(failed)));
    }
  }

  // -- calls ---------------------------------------------------------------------------------

  /** What happens to this client's session and registrations from now on, in a queue of the caller's own; close it to stop. */
  public ClientEvents events() {
    ClientEvents events = new ClientEvents(subscribers::remove);
    subscribers.add(events);
    return events;
  }

  private void emit(ClientEvent event) {
    for (ClientEvents s : subscribers) {
      s.add(event);
    }
  }

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

  /** How many ports {@link #bind} tries before giving up. */
  private static final int BIND_ATTEMPTS = 5;

  /**
   * Registers role and returns a socket already listening on its port (on options' bind address,
   * by default every local address), so that no other process can take the port in between. When
   * the assigned port is taken locally by a process outside the registry, the registration is
   * freed and another port asked for, up to 5 times; a port given in options is tried once.
   *
   * @throws BindException when no port could be listened on; the registrations tried are freed
   */
  public Bound bind(String role, RegisterOptions options) throws BindException {
    IOException last = null;
    for (int attempt = 0; attempt < BIND_ATTEMPTS; attempt++) {
      Registration registration = register(role, options);
      ServerSocket socket = null;
      try {
        socket = new ServerSocket();
        socket.bind(new InetSocketAddress(options.bindAddress, registration.port()));
        return new Bound(socket, registration);
      } catch (IOException e) {
        closeQuietly(socket);
        free(registration.id());
        last = e;
        if (options.port != 0) {
          break;
        }
      }
    }
    BindException e = new BindException("could not listen on a port the registry assigned to " + role + ": " + last.getMessage());
    e.initCause(last);
    throw e;
  }

  private static void closeQuietly(ServerSocket socket) {
    if (socket != null) {
      try {
        socket.close();
      } catch (IOException ignored) {
        // it never listened
      }
    }
  }

  /** Replaces (or, with merge, merges into) a registration's metadata. */
  public Service update(String id, Map<String, String> metadata, boolean merge) {
    return changeMetadata(UpdateRequest.newBuilder().setId(id).putAllMetadata(metadata).setMerge(merge));
  }

  /** Merges metadata into a registration's and removes the keys in remove. */
  public Service mergeMetadata(String id, Map<String, String> metadata, Collection<String> remove) {
    return changeMetadata(UpdateRequest.newBuilder().setId(id).putAllMetadata(metadata).setMerge(true).addAllRemoveKeys(remove));
  }

  private Service changeMetadata(UpdateRequest.Builder request) {
    Session s = acquire();
    try {
      Held h = s.await(requestTimeout);
      Service service = Service.of(timed(h.conn().stub()).update(request.setSessionId(h.id()).build()).getService());
      owned.computeIfPresent(service.id(), (k, r) -> r.toBuilder().clearMetadata().putAllMetadata(service.metadata()).build());
      return service;
    } catch (StatusRuntimeException e) {
      throw error(e);
    } finally {
      release(s);
    }
  }

  /**
   * Frees a registration: this client's own, or, under mTLS, one its certificate's identity owns
   * (or any, for an admin). Freeing this client's last one ends its session.
   */
  public Service free(String id) {
    Session s = acquire();
    try {
      Held h = s.await(requestTimeout);
      Service service = Service.of(timed(h.conn().stub()).free(FreeRequest.newBuilder().setSessionId(h.id()).setId(id).build()).getService());
      drained.remove(id);
      if (owned.remove(id) != null) {
        emit(new ClientEvent.Freed(id, FreeReason.OWNER));
      }
      return service;
    } catch (StatusRuntimeException e) {
      if (e.getStatus().getCode() == Status.Code.NOT_FOUND) {
        drained.remove(id);
        owned.remove(id);
      }
      throw error(e);
    } finally {
      release(s);
    }
  }

  /**
   * Marks a registration draining: its instance is stopping and should get no new traffic.
   * Catalogs stop picking it and gets stop answering it; queries and watches still show it, with
   * draining set. Final until freed, and asking again changes nothing. The same registrations as
   * free may be drained; a drained registration of this client's is drained again whenever it is
   * re-asserted.
   */
  public Service drain(String id) {
    Session s = acquire();
    try {
      Held h = s.await(requestTimeout);
      Service service = Service.of(timed(h.conn().stub()).drain(DrainRequest.newBuilder().setSessionId(h.id()).setId(id).build()).getService());
      if (owned.containsKey(id)) {
        drained.add(id);
      }
      return service;
    } catch (StatusRuntimeException e) {
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

  /** A watch from now: an iterator over events that survives reconnects; close it to stop. */
  public Watch watch(String pattern) {
    return new Watch(pattern, 0);
  }

  /**
   * A watch that resumes after revision (of an event an earlier watch gave): the changes since,
   * then SYNCED, with no snapshot, when the server still has them in its history; otherwise RESET
   * and a fresh snapshot.
   */
  public Watch watch(String pattern, long sinceRevision) {
    return new Watch(pattern, sinceRevision);
  }

  /** A local view of the services matching pattern, kept current by a watch; returns once the first snapshot is in. */
  public Catalog catalog(String pattern) {
    return new Catalog(watch(pattern));
  }

  /**
   * The events of one watch: EXISTING..., SYNCED, then every change. After a reconnect to the same
   * server it resumes from the last revision seen; revisions are a server's own, so after failover
   * to another server it gives RESET and a fresh snapshot.
   */
  public final class Watch implements Iterator<WatchEvent>, AutoCloseable {
    private final String pattern;
    private final Context.CancellableContext context = Context.current().withCancellation();
    private Iterator<dev.seaport.v1.WatchEvent> stream;
    private Conn conn;
    private long since;
    private int failures;
    /** A RESET to give before the next server's snapshot. */
    private boolean resetDue;

    private Watch(String pattern, long since) {
      this.pattern = pattern;
      this.since = since;
      open();
    }

    private void open() {
      String last = conn == null ? null : conn.address();
      conn = channel();
      if (last != null && !last.equals(conn.address())) {
        since = 0;
        resetDue = true;
      }
      dev.seaport.v1.WatchRequest request = dev.seaport.v1.WatchRequest.newBuilder().setPattern(pattern)
          .setNamespace(namespace).setSinceRevision(since).build();
      Context previous = context.attach();
      try {
        stream = conn.stub().watch(request);
      } finally {
        context.detach(previous);
      }
    }

    /** True when an event is due; waits for it. Throws when the watch or its client is closed, or the server refuses it for good. */
    @Override
    public boolean hasNext() {
      while (!resetDue) {
        try {
          if (stream.hasNext()) {
            return true;
          }
          if (context.isCancelled() || closed) {
            return false;
          }
          // the server ended the watch (it is stopping): follow it on the next connection
        } catch (StatusRuntimeException e) {
          Status.Code code = e.getStatus().getCode();
          if (context.isCancelled() || closed || (code != Status.Code.UNAVAILABLE && code != Status.Code.CANCELLED)) {
            throw error(e);
          }
        }
        failed(conn);
        backoff(++failures, Long.MAX_VALUE);
        open();
      }
      return true;
    }

    @Override
    public WatchEvent next() {
      if (!hasNext()) {
        throw new NoSuchElementException();
      }
      if (resetDue) {
        resetDue = false;
        return new WatchEvent("RESET", null, 0, null);
      }
      dev.seaport.v1.WatchEvent e = stream.next();
      failures = 0;
      String kind = e.getKind().name();
      if (!kind.equals("EXISTING") && !kind.equals("RESET")) {
        since = e.getRevision();
      }
      return new WatchEvent(kind, e.hasService() ? Service.of(e.getService()) : null, e.getRevision(),
          kind.equals("FREED") ? FreeReason.of(e.getReason()) : null);
    }

    @Override
    public void close() {
      context.cancel(null);
    }
  }

  /**
   * Ends the session, if any, and waits (up to 2s) for the server to confirm that its registrations
   * are freed; then closes the connection, ending watches and waiting calls. With a drain wait
   * (see {@link Builder#drainWait}), first drains every registration and waits that long.
   */
  @Override
  public void close() {
    if (!drainWait.isZero()) {
      drainAll();
    }
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

  /** Drains every registration of this client's and waits the drain wait; a client that holds none returns at once. */
  private void drainAll() {
    Session s;
    synchronized (this) {
      if (closed || session == null || owned.isEmpty()) {
        return;
      }
      s = session;
      s.writers++;
    }
    try {
      Held h = s.await(requestTimeout);
      for (String id : owned.keySet()) {
        try {
          timed(h.conn().stub()).drain(DrainRequest.newBuilder().setSessionId(h.id()).setId(id).build());
          drained.add(id);
        } catch (StatusRuntimeException e) {
          // freed meanwhile, or the server is gone: nothing to drain
        }
      }
      Thread.sleep(drainWait.toMillis());
    } catch (SeaportException e) {
      // no session to drain through: close at once
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    } finally {
      release(s);
    }
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
