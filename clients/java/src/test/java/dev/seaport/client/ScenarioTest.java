package dev.seaport.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInfo;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** The shared client scenario (docs/client-scenario.md) and the client's own features, against a real seaportd. */
@Timeout(60)
class ScenarioTest {
  private final List<Seaportd> servers = new ArrayList<>();

  static String binary(String name, String env) {
    String path = System.getenv(env);
    return path != null ? path : Path.of("..", "..", "target", "debug", name).toAbsolutePath().normalize().toString();
  }

  /**
   * A seaportd child process on 127.0.0.1. Its stderr (warnings, and the Heartbeat stream's
   * session lines) goes to target/seaportd-logs/TEST-N.log, where tests look for those lines.
   */
  static final class Seaportd {
    final String address;
    final List<String> flags;
    final Path log;
    Process process;

    Seaportd(List<String> flags, Path log) throws Exception {
      try (ServerSocket s = new ServerSocket(0)) {
        address = "127.0.0.1:" + s.getLocalPort();
      }
      this.flags = flags;
      this.log = log;
      Files.createDirectories(log.getParent());
      Files.deleteIfExists(log);
      start();
    }

    void start() throws Exception {
      List<String> command = new ArrayList<>(List.of(binary("seaportd", "SEAPORTD"), "--listen", address, "--drain-delay", "0s",
          "--log", "warn,seaport_server::grpc::heartbeat=info"));
      command.addAll(flags);
      ProcessBuilder builder = new ProcessBuilder(command).redirectOutput(ProcessBuilder.Redirect.INHERIT)
          .redirectError(ProcessBuilder.Redirect.appendTo(log.toFile()));
      builder.environment().put("NO_COLOR", "1"); // plain "session=3" in the log
      process = builder.start();
      String[] hostPort = address.split(":");
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(15);
      while (System.nanoTime() < deadline) {
        try (Socket s = new Socket(hostPort[0], Integer.parseInt(hostPort[1]))) {
          return;
        } catch (IOException e) {
          Thread.sleep(50);
        }
      }
      throw new IllegalStateException("seaportd did not listen on " + address);
    }

    void stop() throws Exception {
      process.destroy(); // SIGTERM
      process.waitFor(15, TimeUnit.SECONDS);
    }

    /** The log lines that contain text. */
    List<String> logged(String text) throws IOException {
      return Files.readAllLines(log).stream().filter(line -> line.contains(text)).toList();
    }

    /** Waits until count log lines contain text, and returns them. */
    List<String> awaitLogged(String text, int count) throws Exception {
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(5);
      while (true) {
        List<String> lines = logged(text);
        if (lines.size() >= count) {
          return lines;
        }
        assertTrue(System.nanoTime() < deadline, "seaportd logged " + lines.size() + " of " + count + " lines with \"" + text + "\" in " + log);
        Thread.sleep(20);
      }
    }
  }

  private String testName;

  @BeforeEach
  void name(TestInfo info) {
    testName = info.getTestMethod().map(m -> m.getName()).orElse("test");
  }

  Seaportd start(String... flags) throws Exception {
    Path log = Path.of("target", "seaportd-logs", testName + "-" + (servers.size() + 1) + ".log");
    Seaportd s = new Seaportd(List.of(flags), log);
    servers.add(s);
    return s;
  }

  @AfterEach
  void stopServers() throws Exception {
    for (Seaportd s : servers) {
      if (s.process.isAlive()) {
        s.stop();
      }
    }
  }

  /**
   * A TCP proxy to seaportd that can cut every connection it carries at once, and keeps accepting
   * new ones; or go silent: forward no byte either way (nor a close) on any connection, old or
   * new, while every socket stays open, as a broken network path does.
   */
  static final class Proxy implements AutoCloseable {
    private final ServerSocket listener = new ServerSocket(0, 50, InetAddress.getLoopbackAddress());
    private final Set<Socket> open = ConcurrentHashMap.newKeySet();
    final String address = "127.0.0.1:" + listener.getLocalPort();
    /** Guarded by this. */
    private boolean silent;

    Proxy(String target) throws IOException {
      String[] hostPort = target.split(":");
      Thread acceptor = new Thread(() -> {
        while (!listener.isClosed()) {
          Socket client;
          try {
            client = listener.accept();
          } catch (IOException e) {
            continue; // closed
          }
          try {
            Socket server = new Socket(hostPort[0], Integer.parseInt(hostPort[1]));
            open.add(client);
            open.add(server);
            pump(client, server);
            pump(server, client);
          } catch (IOException e) {
            try {
              client.close(); // seaportd refused: so does the proxy
            } catch (IOException ignored) {
              // nothing more to do
            }
          }
        }
      }, "proxy-accept");
      acceptor.setDaemon(true);
      acceptor.start();
    }

    private void pump(Socket from, Socket to) {
      Thread t = new Thread(() -> {
        byte[] buffer = new byte[16384];
        try (from; to) {
          InputStream in = from.getInputStream();
          OutputStream out = to.getOutputStream();
          for (int n; (n = in.read(buffer)) >= 0; ) {
            awaitAudible();
            out.write(buffer, 0, n);
          }
          awaitAudible();
        } catch (IOException | InterruptedException e) {
          // cut
        }
        open.remove(from);
        open.remove(to);
      }, "proxy-pump");
      t.setDaemon(true);
      t.start();
    }

    /** Stops forwarding, or starts again. */
    synchronized void silence(boolean silent) {
      this.silent = silent;
      notifyAll();
    }

    private synchronized void awaitAudible() throws InterruptedException {
      while (silent && !listener.isClosed()) {
        wait();
      }
    }

    /** Resets every connection now, as a network failure would. */
    void cut() {
      for (Socket s : open) {
        open.remove(s);
        try {
          s.setSoLinger(true, 0);
          s.close();
        } catch (IOException e) {
          // its pump closed it already
        }
      }
    }

    @Override
    public void close() throws IOException {
      listener.close();
      silence(false);
      cut();
    }
  }

  static List<String> ids(List<Service> services) {
    return services.stream().map(Service::id).toList();
  }

  /** The session number seaportd logs a line with ("session=3"). */
  static String sessionOf(String line) {
    Matcher m = Pattern.compile("session=(\\d+)").matcher(line);
    assertTrue(m.find(), line);
    return m.group(1);
  }

  static boolean sessionThreadAlive() {
    return Thread.getAllStackTraces().keySet().stream().anyMatch(t -> t.getName().equals("seaport-session") && t.isAlive());
  }

  static SeaportClient connect(Seaportd s) {
    return SeaportClient.builder().address(s.address).connect();
  }

  @Test
  void registerGetAndQuery() throws Exception {
    Seaportd s = start();
    try (SeaportClient owner = connect(s); SeaportClient other = connect(s)) {
      Registration reg = owner.register("web@1.2.3", RegisterOptions.defaults().meta("zone", "a"));
      assertTrue(reg.port() >= 10000 && reg.port() <= 65535, "port " + reg.port());
      List<Service> found = other.get("web@1.2.x", Duration.ofSeconds(5));
      assertEquals(List.of(reg.id()), found.stream().map(Service::id).toList());
      assertEquals("a", found.get(0).metadata().get("zone"));
      assertEquals(List.of(), other.query("web@2.x"));
    }
  }

  @Test
  void watchSeesSnapshotUpdateAndFree() throws Exception {
    Seaportd s = start();
    try (SeaportClient client = connect(s); ClientEvents mine = client.events()) {
      Registration reg = client.register("web@1.2.3", RegisterOptions.defaults().meta("zone", "a"));
      try (SeaportClient.Watch events = client.watch("web")) {
        WatchEvent first = events.next();
        assertEquals("EXISTING", first.kind());
        assertEquals(reg.id(), first.service().id());
        assertEquals("SYNCED", events.next().kind());
        client.update(reg.id(), Map.of("zone", "b"), false);
        WatchEvent updated = events.next();
        assertEquals("UPDATED", updated.kind());
        assertEquals(Map.of("zone", "b"), updated.service().metadata());
        client.free(reg.id());
        WatchEvent freed = events.next();
        assertEquals("FREED", freed.kind());
        assertEquals(reg.id(), freed.service().id());
        assertEquals(FreeReason.OWNER, freed.reason());
        assertEquals(new ClientEvent.Freed(reg.id(), FreeReason.OWNER),
            last(eventsUntil(mine, ClientEvent.Freed.class, Duration.ofSeconds(5)), ClientEvent.Freed.class));
      }
    }
  }

  @Test
  void getStartedBeforeTheRegistrationCompletesWhenItExists() throws Exception {
    Seaportd s = start();
    try (SeaportClient waiter = connect(s); SeaportClient owner = connect(s)) {
      CompletableFuture<List<Service>> found = CompletableFuture.supplyAsync(() -> waiter.get("web@1.2.x", Duration.ofSeconds(10)));
      Thread.sleep(300);
      Registration reg = owner.register("web@1.2.9", RegisterOptions.defaults());
      assertEquals(reg.id(), found.get(10, TimeUnit.SECONDS).get(0).id());
      SeaportException timeout = assertThrows(SeaportException.class, () -> waiter.get("nobody", Duration.ofMillis(300)));
      assertEquals(Status.Code.DEADLINE_EXCEEDED, timeout.code());
    }
  }

  @Test
  void aRestartedServerGetsTheRegistrationBackWithItsPort() throws Exception {
    Seaportd s = start();
    try (SeaportClient client = SeaportClient.builder().address(s.address).ttl(Duration.ofSeconds(5)).connect()) {
      Registration reg = client.register("web@1.2.3", RegisterOptions.defaults());
      s.stop();
      s.start();
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(15);
      while (true) {
        try {
          List<Service> back = client.query("web");
          if (back.size() == 1) {
            assertEquals(reg.id(), back.get(0).id());
            assertEquals(reg.port(), back.get(0).port());
            return;
          }
        } catch (SeaportException e) {
          // reconnecting
        }
        assertTrue(System.nanoTime() < deadline, "the registration never came back");
        Thread.sleep(100);
      }
    }
  }

  @Test
  void aBadRangeIsInvalidArgumentWithTheServersMessage() throws Exception {
    Seaportd s = start();
    try (SeaportClient client = connect(s)) {
      SeaportException bad = assertThrows(SeaportException.class, () -> client.query("web@1.2.3.4"));
      assertEquals(Status.Code.INVALID_ARGUMENT, bad.code());
      assertTrue(bad.serverMessage().contains("\"1.2.3.4\" has more than three version parts"), bad.serverMessage());
    }
  }

  /** A development CA in dir/pki with a server certificate and one for each client identity. */
  static Path pki(Path dir, String... clients) throws Exception {
    Path pki = dir.resolve("pki");
    List<String> command = new ArrayList<>(List.of(binary("seaportctl", "SEAPORTCTL"), "certs", "init", pki.toString()));
    for (String client : clients) {
      command.addAll(List.of("--client", client));
    }
    Process init = new ProcessBuilder(command).redirectErrorStream(true).start();
    init.getInputStream().readAllBytes();
    assertEquals(0, init.waitFor());
    return pki;
  }

  Seaportd startMtls(Path pki, String... flags) throws Exception {
    List<String> all = new ArrayList<>(List.of("--tls-cert", pki.resolve("server.pem").toString(),
        "--tls-key", pki.resolve("server-key.pem").toString(), "--client-ca", pki.resolve("ca.pem").toString()));
    all.addAll(List.of(flags));
    return start(all.toArray(String[]::new));
  }

  /** A client builder with identity's certificate, or none when identity is null. */
  static SeaportClient.Builder over(Seaportd s, Path pki, String identity) throws IOException {
    byte[] ca = Files.readAllBytes(pki.resolve("ca.pem"));
    return SeaportClient.builder().address(s.address).tls(ca,
        identity == null ? null : Files.readAllBytes(pki.resolve("client-" + identity + ".pem")),
        identity == null ? null : Files.readAllBytes(pki.resolve("client-" + identity + "-key.pem")));
  }

  @Test
  void overMtlsACertificateRegistersAndNoCertificateIsRefused(@TempDir Path tmp) throws Exception {
    Path pki = pki(tmp, "duke");
    Seaportd s = startMtls(pki);
    try (SeaportClient client = over(s, pki, "duke").connect()) {
      assertEquals("duke", client.register("web@1.2.3", RegisterOptions.defaults()).service().owner());
    }
    // Reads need no certificate, so a client without one connects; its first register is refused.
    try (SeaportClient reader = over(s, pki, null).connect()) {
      assertEquals(List.of(), reader.query("web"));
      SeaportException refused = assertThrows(SeaportException.class, () -> reader.register("web@1.2.3", RegisterOptions.defaults()));
      assertEquals(Status.Code.UNAUTHENTICATED, refused.code());
    }
  }

  @Test
  void anAdminsFreeIsForgottenAndEndsTheSessionItEmptied(@TempDir Path tmp) throws Exception {
    Path pki = pki(tmp, "duke", "ops");
    Path policy = tmp.resolve("policy.toml");
    Files.writeString(policy, "admins = [\"ops\"]\n[[allow]]\nidentities = [\"duke\"]\nnames = [\"*\"]\n");
    Seaportd s = startMtls(pki, "--policy", policy.toString());
    try (SeaportClient duke = over(s, pki, "duke").ttl(Duration.ofSeconds(1)).connect();
         SeaportClient ops = over(s, pki, "ops").connect()) {
      Registration reg = duke.register("web@1.2.3", RegisterOptions.defaults());
      String dukes = sessionOf(s.logged("identity=duke").get(0));
      ops.free(reg.id());
      // duke hears `evicted` with its next pong (a third of the ttl), forgets the registration, so
      // never re-asserts it, and, holding nothing now, closes its session.
      s.awaitLogged("session closed session=" + dukes + " ", 1);
      assertEquals(List.of(), ops.query("web"));
    }
  }

  @Test
  void closeFreesAtOnceAndReturnsWithin100ms() throws Exception {
    Seaportd s = start();
    try (SeaportClient reader = connect(s)) {
      SeaportClient owner = connect(s);
      Registration reg = owner.register("web@1.2.3", RegisterOptions.defaults());
      assertEquals(List.of(reg.id()), ids(reader.query("web")));
      long started = System.nanoTime();
      owner.close();
      long tookMs = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started);
      assertEquals(List.of(), reader.query("web"), "the registration outlived close()");
      assertTrue(tookMs < 100, "close() took " + tookMs + " ms");
      assertFalse(sessionThreadAlive(), "close() left the session thread running");
    }
  }

  @Test
  void aCutConnectionResumesTheSessionAndFreesNothing() throws Exception {
    Seaportd s = start();
    try (Proxy proxy = new Proxy(s.address);
         SeaportClient watcher = connect(s);
         SeaportClient owner = SeaportClient.builder().address(proxy.address).ttl(Duration.ofSeconds(1)).connect();
         ClientEvents mine = owner.events()) {
      Registration reg = owner.register("web@1.2.3", RegisterOptions.defaults());
      try (SeaportClient.Watch events = watcher.watch("web")) {
        assertEquals("EXISTING", events.next().kind());
        assertEquals("SYNCED", events.next().kind());
        proxy.cut();
        // The owner's session is the one with a 1s ttl: resumed, and never opened again.
        String resumed = sessionOf(s.awaitLogged("session resumed", 1).get(0));
        assertEquals(sessionOf(s.logged("ttl_ms=1000").get(0)), resumed);
        List<ClientEvent> seen = eventsUntil(mine, ClientEvent.Resumed.class, Duration.ofSeconds(5));
        assertTrue(seen.get(seen.size() - 2) instanceof ClientEvent.Disconnected, "events: " + seen);
        // Longer than the ttl without a change: the registration was never freed, nor registered again.
        CompletableFuture<WatchEvent> change = CompletableFuture.supplyAsync(events::next);
        assertThrows(TimeoutException.class, () -> change.get(1500, TimeUnit.MILLISECONDS), () -> "the watcher saw " + change.join());
        List<Service> still = watcher.query("web");
        assertEquals(List.of(reg.id()), ids(still));
        assertEquals(reg.port(), still.get(0).port());
        assertEquals(1, s.logged("ttl_ms=1000").size(), "the owner opened a second session");
        // The watcher was listening all along: it sees the close.
        owner.close();
        WatchEvent freed = change.get(5, TimeUnit.SECONDS);
        assertEquals("FREED", freed.kind());
        assertEquals(reg.id(), freed.service().id());
        assertEquals(FreeReason.CLOSED, freed.reason());
        assertEquals(new ClientEvent.Freed(reg.id(), FreeReason.CLOSED),
            last(eventsUntil(mine, ClientEvent.Freed.class, Duration.ofSeconds(5)), ClientEvent.Freed.class));
      }
    }
  }

  @Test
  void aReaderOpensNoSession() throws Exception {
    Seaportd s = start();
    try (SeaportClient reader = connect(s)) {
      assertEquals(List.of(), reader.query("web"));
      SeaportException nothing = assertThrows(SeaportException.class, () -> reader.get("web", Duration.ofMillis(200)));
      assertEquals(Status.Code.DEADLINE_EXCEEDED, nothing.code());
      try (SeaportClient.Watch events = reader.watch("web")) {
        assertEquals("SYNCED", events.next().kind());
      }
      // The first session seaportd logs is a writer's, opened by its register and closed by its last free.
      try (SeaportClient writer = connect(s)) {
        Registration reg = writer.register("web@1.2.3", RegisterOptions.defaults());
        assertEquals(List.of(reg.id()), ids(reader.get("web", Duration.ofSeconds(5))));
        writer.free(reg.id());
        String closed = sessionOf(s.awaitLogged("session closed", 1).get(0));
        List<String> opened = s.logged("session opened");
        assertEquals(1, opened.size(), "sessions opened: " + opened);
        assertEquals(sessionOf(opened.get(0)), closed);
      }
    }
  }

  /** The events up to and including the first of type, waiting up to within; fails with those seen when none comes. */
  static List<ClientEvent> eventsUntil(ClientEvents events, Class<? extends ClientEvent> type, Duration within) throws InterruptedException {
    List<ClientEvent> seen = new ArrayList<>();
    long deadline = System.nanoTime() + within.toNanos();
    while (true) {
      long left = deadline - System.nanoTime();
      ClientEvent e = left > 0 ? events.poll(Duration.ofNanos(left)) : null;
      assertTrue(e != null, "no " + type.getSimpleName() + " within " + within + "; saw " + seen);
      seen.add(e);
      if (type.isInstance(e)) {
        return seen;
      }
    }
  }

  static <T extends ClientEvent> T last(List<ClientEvent> events, Class<T> type) {
    return type.cast(events.get(events.size() - 1));
  }

  /** The next watch event, failing after within (a watch's next() waits for ever). */
  static WatchEvent next(SeaportClient.Watch watch, Duration within) throws Exception {
    return CompletableFuture.supplyAsync(watch::next).get(within.toMillis(), TimeUnit.MILLISECONDS);
  }

  @Test
  void updateReplacesMergesAndRemovesKeys() throws Exception {
    Seaportd s = start();
    try (SeaportClient client = connect(s)) {
      Registration reg = client.register("web@1.2.3", RegisterOptions.defaults().meta("zone", "a").meta("tier", "1"));
      assertEquals(Map.of("zone", "b"), client.update(reg.id(), Map.of("zone", "b"), false).metadata());
      assertEquals(Map.of("zone", "b", "rack", "r1"), client.update(reg.id(), Map.of("rack", "r1"), true).metadata());
      Service merged = client.mergeMetadata(reg.id(), Map.of("tier", "2"), List.of("zone"));
      assertEquals(Map.of("rack", "r1", "tier", "2"), merged.metadata());
      assertEquals(Map.of("rack", "r1", "tier", "2"), client.query("web").get(0).metadata());
    }
  }

  /** count consecutive ports, each held by a listening socket on every local address. */
  static List<ServerSocket> consecutivePorts(int count) {
    for (int attempt = 0; ; attempt++) {
      int base = 20000 + java.util.concurrent.ThreadLocalRandom.current().nextInt(40000);
      List<ServerSocket> held = new ArrayList<>();
      try {
        for (int i = 0; i < count; i++) {
          held.add(new ServerSocket(base + i));
        }
        return held;
      } catch (IOException taken) {
        for (ServerSocket h : held) {
          try {
            h.close();
          } catch (IOException ignored) {
            // never mind
          }
        }
        assertTrue(attempt < 50, "found no " + count + " consecutive free ports");
      }
    }
  }

  @Test
  void bindListensOnTheAssignedPortAndSkipsPortsTakenLocally() throws Exception {
    // Of the five ports seaportd may assign, four are taken by other processes (sockets here): bind
    // frees each of those it is given and asks again (a freed port is quarantined, so never given
    // twice), until it listens on the fifth.
    List<ServerSocket> ports = consecutivePorts(5);
    int first = ports.get(0).getLocalPort();
    int free = ports.get(4).getLocalPort();
    Seaportd s = start("--port-range", first + "-" + free);
    try (SeaportClient client = connect(s); ClientEvents events = client.events()) {
      ports.get(4).close();
      Bound bound = client.bind("web@1.2.3", RegisterOptions.defaults().meta("zone", "a"));
      try (ServerSocket socket = bound.socket()) {
        assertEquals(free, bound.registration().port());
        assertEquals(free, socket.getLocalPort());
        try (Socket caller = new Socket(InetAddress.getLoopbackAddress(), bound.registration().port()); Socket served = socket.accept()) {
          assertTrue(served.isConnected());
        }
        List<Service> registered = client.query("web");
        assertEquals(List.of(bound.registration().id()), ids(registered));
        assertEquals(free, registered.get(0).port());
        // A port given explicitly is tried once; the registration made for it is freed.
        try (ServerSocket busy = new ServerSocket(0)) {
          assertThrows(java.net.BindException.class, () -> client.bind("web@1.2.4", RegisterOptions.defaults().port(busy.getLocalPort())));
        }
        assertEquals(List.of(bound.registration().id()), ids(client.query("web")));
      }
    } finally {
      for (ServerSocket p : ports) {
        p.close();
      }
    }
  }

  @Test
  void aWatchResumesFromARevisionAndAcrossAReconnect() throws Exception {
    Seaportd s = start();
    try (Proxy proxy = new Proxy(s.address);
         SeaportClient owner = connect(s);
         SeaportClient watcher = SeaportClient.builder().address(proxy.address).connect()) {
      Registration a = owner.register("web@1.0.0", RegisterOptions.defaults());
      long synced;
      try (SeaportClient.Watch events = watcher.watch("web")) {
        assertEquals("EXISTING", events.next().kind());
        WatchEvent marker = events.next();
        assertEquals("SYNCED", marker.kind());
        synced = marker.revision();
      }
      Registration b = owner.register("web@2.0.0", RegisterOptions.defaults());
      owner.update(a.id(), Map.of("zone", "b"), false);
      // From the revision of the first watch's SYNCED: the two changes since, with no snapshot.
      try (SeaportClient.Watch events = watcher.watch("web", synced)) {
        WatchEvent registered = next(events, Duration.ofSeconds(5));
        assertEquals("REGISTERED", registered.kind());
        assertEquals(b.id(), registered.service().id());
        WatchEvent updated = next(events, Duration.ofSeconds(5));
        assertEquals("UPDATED", updated.kind());
        assertEquals(a.id(), updated.service().id());
        assertEquals("SYNCED", next(events, Duration.ofSeconds(5)).kind());
        // The connection is cut and b freed meanwhile: the watch reconnects and resumes after the
        // last revision it gave, so the free comes next (before or after the replay's SYNCED), with
        // no snapshot again.
        proxy.cut();
        owner.free(b.id());
        WatchEvent freed;
        do {
          freed = next(events, Duration.ofSeconds(5));
        } while (freed.kind().equals("SYNCED"));
        assertEquals("FREED", freed.kind());
        assertEquals(b.id(), freed.service().id());
        assertEquals(FreeReason.OWNER, freed.reason());
      }
    }
  }

  @Test
  void aCatalogFollowsItsWatchAndPicksRoundRobinAtRandomAndExcluding() throws Exception {
    Seaportd s = start();
    try (SeaportClient owner = connect(s); SeaportClient reader = connect(s)) {
      Registration a = owner.register("web@1.0.0", RegisterOptions.defaults());
      Registration b = owner.register("web@1.0.1", RegisterOptions.defaults());
      try (Catalog catalog = reader.catalog("web")) {
        assertEquals(Set.of(a.id(), b.id()), Set.copyOf(ids(catalog.services())));
        List<String> picked = new ArrayList<>();
        for (int i = 0; i < 4; i++) {
          picked.add(catalog.pick().orElseThrow().id());
        }
        assertEquals(Set.of(a.id(), b.id()), Set.copyOf(picked.subList(0, 2)), "round robin: " + picked);
        assertEquals(picked.subList(0, 2), picked.subList(2, 4), "round robin: " + picked);
        assertEquals(b.id(), catalog.pickExcluding(List.of(a.id())).orElseThrow().id());
        assertEquals(b.id(), catalog.pickExcluding(List.of(a.id())).orElseThrow().id());
        assertTrue(catalog.pickExcluding(List.of(a.id(), b.id())).isEmpty());
        Set<String> random = new java.util.HashSet<>();
        for (int i = 0; i < 64; i++) {
          random.add(catalog.pickRandom().orElseThrow().id());
        }
        assertEquals(Set.of(a.id(), b.id()), random);
        // Changes arrive by the watch.
        Registration c = owner.register("web@1.0.2", RegisterOptions.defaults());
        assertTrue(catalog.await(list -> ids(list).contains(c.id()), Duration.ofSeconds(5)), "c never showed up");
        owner.update(c.id(), Map.of("zone", "b"), false);
        assertTrue(catalog.await(list -> list.stream().anyMatch(x -> x.metadata().containsKey("zone")), Duration.ofSeconds(5)));
        owner.free(a.id());
        assertTrue(catalog.await(list -> !ids(list).contains(a.id()), Duration.ofSeconds(5)), "a was never dropped");
        assertEquals(Set.of(b.id(), c.id()), Set.copyOf(ids(catalog.services())));
      }
      assertTrue(catalogsStopped(), "closing a catalog left its thread running");
    }
  }

  static boolean catalogsStopped() {
    return Thread.getAllStackTraces().keySet().stream().noneMatch(t -> t.getName().equals("seaport-catalog") && t.isAlive());
  }

  @Test
  void failoverMovesTheSessionToTheNextServerAndReassertsThere() throws Exception {
    Seaportd a = start();
    Seaportd b = start();
    try (SeaportClient owner = SeaportClient.builder().address(a.address).address(b.address).inOrder().ttl(Duration.ofSeconds(1)).connect();
         ClientEvents events = owner.events()) {
      Registration reg = owner.register("web@1.2.3", RegisterOptions.defaults());
      assertEquals(a.address, last(eventsUntil(events, ClientEvent.Connected.class, Duration.ofSeconds(5)), ClientEvent.Connected.class).server());
      try (SeaportClient.Watch watch = owner.watch("web")) {
        assertEquals("EXISTING", watch.next().kind());
        assertEquals("SYNCED", watch.next().kind());
        a.stop();
        // b never knew the session: a new one there holds the registration again, same id and port.
        List<ClientEvent> seen = eventsUntil(events, ClientEvent.Reasserted.class, Duration.ofSeconds(5));
        assertEquals(4, seen.size(), "events: " + seen);
        assertTrue(seen.get(0) instanceof ClientEvent.Disconnected d && d.server().equals(a.address), "events: " + seen);
        assertEquals(List.of(new ClientEvent.Freed(reg.id(), FreeReason.EXPIRED), new ClientEvent.Connected(b.address, "127.0.0.1"),
            new ClientEvent.Reasserted(1, Map.of())), seen.subList(1, 4));
        Service there = owner.query("web").get(0);
        assertEquals(reg.id(), there.id());
        assertEquals(reg.port(), there.port());
        // Revisions are each server's own: the watch starts over at b.
        assertEquals("RESET", next(watch, Duration.ofSeconds(5)).kind());
        WatchEvent back;
        do {
          back = next(watch, Duration.ofSeconds(5));
        } while (back.service() == null);
        assertEquals(reg.id(), back.service().id());
      }
      // A client given a server that is down uses the next.
      try (SeaportClient reader = SeaportClient.builder().address(a.address).address(b.address).inOrder().connect()) {
        assertEquals(List.of(reg.id()), ids(reader.query("web")));
      }
    }
  }

  @Test
  void aSilentPathIsDeclaredDeadAndTheSessionResumedOverTheNextAddress() throws Exception {
    Seaportd s = start();
    Duration ttl = Duration.ofSeconds(2);
    try (Proxy proxy = new Proxy(s.address);
         SeaportClient watcher = connect(s);
         SeaportClient owner = SeaportClient.builder().address(proxy.address).address(s.address).inOrder().ttl(ttl).connect();
         ClientEvents events = owner.events()) {
      Registration reg = owner.register("web@1.2.3", RegisterOptions.defaults());
      assertEquals(proxy.address, last(eventsUntil(events, ClientEvent.Connected.class, Duration.ofSeconds(5)), ClientEvent.Connected.class).server());
      try (SeaportClient.Watch changes = watcher.watch("web")) {
        assertEquals("EXISTING", changes.next().kind());
        assertEquals("SYNCED", changes.next().kind());
        long silenced = System.nanoTime();
        proxy.silence(true);
        List<ClientEvent> seen = eventsUntil(events, ClientEvent.Resumed.class, ttl);
        long tookMs = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - silenced);
        assertTrue(tookMs < ttl.toMillis(), "resumed " + tookMs + " ms after the path went silent");
        assertEquals(2, seen.size(), "events: " + seen);
        assertTrue(seen.get(0) instanceof ClientEvent.Disconnected d && d.server().equals(proxy.address), "events: " + seen);
        assertEquals(new ClientEvent.Resumed(s.address), seen.get(1));
        String opened = sessionOf(s.logged("ttl_ms=2000").get(0));
        assertEquals(opened, sessionOf(s.awaitLogged("session resumed", 1).get(0)));
        // Events come in revision order: a change made now comes next only if nothing was freed before it.
        Registration marker = watcher.register("web@9.9.9", RegisterOptions.defaults());
        WatchEvent after = next(changes, Duration.ofSeconds(5));
        assertEquals("REGISTERED", after.kind());
        assertEquals(marker.id(), after.service().id());
        Service still = watcher.query("web@1.2.3").get(0);
        assertEquals(reg.id(), still.id());
        assertEquals(reg.port(), still.port());
        // The session lives on over the direct path: a write works on it, with no new session.
        owner.update(reg.id(), Map.of("zone", "b"), false);
        assertEquals("UPDATED", next(changes, Duration.ofSeconds(5)).kind());
        assertEquals(1, s.logged("ttl_ms=2000").size(), "the owner opened a second session");
      }
    }
  }

  @Test
  void aSessionLostOnASilentPathIsReassertedAndTheFreeSaysExpired() throws Exception {
    Seaportd s = start();
    try (Proxy proxy = new Proxy(s.address);
         SeaportClient other = connect(s);
         SeaportClient owner = SeaportClient.builder().address(proxy.address).ttl(Duration.ofSeconds(1)).connect();
         ClientEvents events = owner.events()) {
      Registration kept = owner.register("web@1.2.3", RegisterOptions.defaults());
      Registration taken = owner.register("web@1.2.4", RegisterOptions.defaults());
      try (SeaportClient.Watch changes = other.watch("web")) {
        assertEquals("EXISTING", changes.next().kind());
        assertEquals("EXISTING", changes.next().kind());
        assertEquals("SYNCED", changes.next().kind());
        proxy.silence(true);
        for (int i = 0; i < 2; i++) {
          WatchEvent expired = next(changes, Duration.ofSeconds(5));
          assertEquals("FREED", expired.kind());
          assertEquals(FreeReason.EXPIRED, expired.reason());
        }
        // Meanwhile another process takes one of the freed ports.
        other.register("thief@1.0.0", RegisterOptions.defaults().port(taken.port()));
        proxy.silence(false);
        List<ClientEvent> seen = eventsUntil(events, ClientEvent.Reasserted.class, Duration.ofSeconds(10));
        assertTrue(seen.containsAll(List.of(new ClientEvent.Freed(kept.id(), FreeReason.EXPIRED),
            new ClientEvent.Freed(taken.id(), FreeReason.EXPIRED))), "events: " + seen);
        ClientEvent.Reasserted reasserted = last(seen, ClientEvent.Reasserted.class);
        assertEquals(1, reasserted.count());
        assertEquals(Set.of(taken.id()), reasserted.failed().keySet());
        assertTrue(reasserted.failed().get(taken.id()).startsWith("ALREADY_EXISTS"), reasserted.failed().toString());
        WatchEvent back = next(changes, Duration.ofSeconds(5));
        assertEquals("REGISTERED", back.kind());
        assertEquals(kept.id(), back.service().id());
        assertEquals(kept.port(), back.service().port());
      }
    }
  }

  @Test
  void anEvictedRegistrationIsNeverReassertedButTheOthersAre(@TempDir Path tmp) throws Exception {
    Path pki = pki(tmp, "duke", "ops");
    Path policy = tmp.resolve("policy.toml");
    Files.writeString(policy, "admins = [\"ops\"]\n[[allow]]\nidentities = [\"duke\"]\nnames = [\"*\"]\n");
    Seaportd s = startMtls(pki, "--policy", policy.toString());
    try (SeaportClient duke = over(s, pki, "duke").ttl(Duration.ofSeconds(1)).connect();
         SeaportClient ops = over(s, pki, "ops").connect();
         ClientEvents events = duke.events()) {
      Registration evicted = duke.register("web@1.0.0", RegisterOptions.defaults());
      Registration kept = duke.register("web@2.0.0", RegisterOptions.defaults());
      try (SeaportClient.Watch changes = ops.watch("web@1.0.0")) {
        assertEquals("EXISTING", changes.next().kind());
        assertEquals("SYNCED", changes.next().kind());
        ops.free(evicted.id());
        WatchEvent freed = next(changes, Duration.ofSeconds(5));
        assertEquals(FreeReason.ADMIN, freed.reason());
      }
      List<ClientEvent> seen = eventsUntil(events, ClientEvent.Evicted.class, Duration.ofSeconds(5));
      assertEquals(List.of(new ClientEvent.Freed(evicted.id(), FreeReason.ADMIN), new ClientEvent.Evicted(evicted.id(), "ops")),
          seen.subList(seen.size() - 2, seen.size()));
      s.stop();
      s.start();
      assertEquals(new ClientEvent.Reasserted(1, Map.of()),
          last(eventsUntil(events, ClientEvent.Reasserted.class, Duration.ofSeconds(10)), ClientEvent.Reasserted.class));
      List<Service> back = ops.query("web");
      assertEquals(List.of(kept.id()), ids(back));
      assertEquals(kept.port(), back.get(0).port());
    }
  }

  @Test
  void aDrainedRegistrationIsShownButNeitherPickedNorGot() throws Exception {
    Seaportd s = start();
    try (SeaportClient owner = connect(s); SeaportClient reader = connect(s)) {
      Registration a = owner.register("web@1.0.0", RegisterOptions.defaults());
      Registration b = owner.register("web@1.0.1", RegisterOptions.defaults());
      try (Catalog catalog = reader.catalog("web"); SeaportClient.Watch changes = reader.watch("web")) {
        assertEquals(List.of("EXISTING", "EXISTING", "SYNCED"), List.of(changes.next().kind(), changes.next().kind(), changes.next().kind()));
        Service drained = owner.drain(a.id());
        assertTrue(drained.draining());
        WatchEvent updated = next(changes, Duration.ofSeconds(5));
        assertEquals("UPDATED", updated.kind());
        assertEquals(a.id(), updated.service().id());
        assertTrue(updated.service().draining());
        // Draining again answers the same and tells watchers nothing: the next event is b's update.
        assertEquals(drained, owner.drain(a.id()));
        owner.update(b.id(), Map.of("zone", "b"), false);
        assertEquals(b.id(), next(changes, Duration.ofSeconds(5)).service().id());
        // An update keeps it draining.
        assertTrue(owner.update(a.id(), Map.of("zone", "a"), false).draining());
        assertTrue(next(changes, Duration.ofSeconds(5)).service().draining());
        // Query shows it, marked; get answers the others only, and waits while every match drains.
        Service shown = reader.query("web@1.0.0").get(0);
        assertEquals(a.id(), shown.id());
        assertTrue(shown.draining());
        assertEquals(List.of(b.id()), ids(reader.get("web", Duration.ofSeconds(5))));
        SeaportException none = assertThrows(SeaportException.class, () -> reader.get("web@1.0.0", Duration.ofMillis(300)));
        assertEquals(Status.Code.DEADLINE_EXCEEDED, none.code());
        // The catalog keeps it, marked, and never picks it.
        assertTrue(catalog.await(list -> list.stream().anyMatch(x -> x.id().equals(a.id()) && x.draining() && x.metadata().containsKey("zone")),
            Duration.ofSeconds(5)), "the catalog never saw the drain");
        assertEquals(2, catalog.size());
        for (int i = 0; i < 4; i++) {
          assertEquals(b.id(), catalog.pick().orElseThrow().id());
          assertEquals(b.id(), catalog.pickRandom().orElseThrow().id());
        }
        assertTrue(catalog.pickExcluding(List.of(b.id())).isEmpty());
      }
    }
  }

  @Test
  void aGracefulCloseDrainsWaitsThenFrees() throws Exception {
    Seaportd s = start();
    Duration drainWait = Duration.ofMillis(500);
    try (SeaportClient reader = connect(s)) {
      SeaportClient owner = SeaportClient.builder().address(s.address).drainWait(drainWait).connect();
      Registration a = owner.register("web@1.0.0", RegisterOptions.defaults());
      Registration b = owner.register("web@1.0.1", RegisterOptions.defaults());
      try (SeaportClient.Watch changes = reader.watch("web")) {
        assertEquals(List.of("EXISTING", "EXISTING", "SYNCED"), List.of(changes.next().kind(), changes.next().kind(), changes.next().kind()));
        long started = System.nanoTime();
        CompletableFuture<Void> closing = CompletableFuture.runAsync(owner::close);
        Set<String> drained = new java.util.HashSet<>();
        for (int i = 0; i < 2; i++) {
          WatchEvent e = next(changes, Duration.ofSeconds(5));
          assertEquals("UPDATED", e.kind());
          assertTrue(e.service().draining());
          drained.add(e.service().id());
        }
        assertEquals(Set.of(a.id(), b.id()), drained);
        // While the drain wait lasts, readers are steered away but the registrations stay.
        assertEquals(Set.of(a.id(), b.id()), Set.copyOf(ids(reader.query("web"))));
        Set<String> freed = new java.util.HashSet<>();
        for (int i = 0; i < 2; i++) {
          WatchEvent e = next(changes, Duration.ofSeconds(5));
          assertEquals("FREED", e.kind());
          assertEquals(FreeReason.CLOSED, e.reason());
          freed.add(e.service().id());
        }
        long freedMs = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started);
        assertEquals(Set.of(a.id(), b.id()), freed);
        closing.get(5, TimeUnit.SECONDS);
        long closedMs = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started);
        assertTrue(freedMs >= drainWait.toMillis(), "freed " + freedMs + " ms after close() began");
        assertTrue(closedMs < drainWait.toMillis() + 1000, "close() took " + closedMs + " ms");
      }
    }
  }

  @Test
  void aDrainedRegistrationIsDrainedAgainWhenReasserted() throws Exception {
    Seaportd s = start();
    try (SeaportClient owner = SeaportClient.builder().address(s.address).ttl(Duration.ofSeconds(1)).connect();
         ClientEvents events = owner.events()) {
      Registration a = owner.register("web@1.0.0", RegisterOptions.defaults());
      Registration b = owner.register("web@1.0.1", RegisterOptions.defaults());
      owner.drain(a.id());
      s.stop();
      s.start();
      assertEquals(new ClientEvent.Reasserted(2, Map.of()),
          last(eventsUntil(events, ClientEvent.Reasserted.class, Duration.ofSeconds(10)), ClientEvent.Reasserted.class));
      Map<String, Service> back = new java.util.HashMap<>();
      owner.query("web").forEach(x -> back.put(x.id(), x));
      assertEquals(Set.of(a.id(), b.id()), back.keySet());
      assertTrue(back.get(a.id()).draining(), "a came back without its drain");
      assertFalse(back.get(b.id()).draining());
      assertEquals(a.port(), back.get(a.id()).port());
    }
  }

  @Test
  void aStoppingServerSendsTheSessionToTheNextAddressAtOnce() throws Exception {
    Seaportd a = start();
    Seaportd b = start();
    Duration ttl = Duration.ofSeconds(10);
    try (SeaportClient owner = SeaportClient.builder().address(a.address).address(b.address).inOrder().ttl(ttl).connect();
         ClientEvents events = owner.events()) {
      Registration reg = owner.register("web@1.2.3", RegisterOptions.defaults());
      assertEquals(a.address, last(eventsUntil(events, ClientEvent.Connected.class, Duration.ofSeconds(5)), ClientEvent.Connected.class).server());
      long stopped = System.nanoTime();
      a.process.destroy(); // SIGTERM
      // The memory store's sessions live in one seaportd, so b opens a new one and the registration
      // is re-asserted there, same id and port, well within the ttl.
      List<ClientEvent> seen = eventsUntil(events, ClientEvent.Reasserted.class, ttl);
      long movedMs = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - stopped);
      assertEquals(List.of(new ClientEvent.Disconnected(a.address, "the server is stopping"), new ClientEvent.Freed(reg.id(), FreeReason.EXPIRED),
          new ClientEvent.Connected(b.address, "127.0.0.1"), new ClientEvent.Reasserted(1, Map.of())), seen);
      assertTrue(movedMs < 1000, "re-asserted at the next address " + movedMs + " ms after SIGTERM");
      Service there = owner.query("web").get(0);
      assertEquals(reg.id(), there.id());
      assertEquals(reg.port(), there.port());
      // a waits for its session streams to go, and this client's went at once.
      assertTrue(a.process.waitFor(3, TimeUnit.SECONDS), "the stopping seaportd did not exit within 3s of SIGTERM");
    }
  }
}
