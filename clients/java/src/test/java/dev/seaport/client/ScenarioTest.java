package dev.seaport.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import java.io.IOException;
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
import org.junit.jupiter.api.io.TempDir;

/** The shared client scenario (docs/client-scenario.md) against a real seaportd. */
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

  /** A TCP proxy to seaportd that can cut every connection it carries at once, and keeps accepting new ones. */
  static final class Proxy implements AutoCloseable {
    private final ServerSocket listener = new ServerSocket(0, 50, InetAddress.getLoopbackAddress());
    private final Set<Socket> open = ConcurrentHashMap.newKeySet();
    final String address = "127.0.0.1:" + listener.getLocalPort();

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
        try (from; to) {
          from.getInputStream().transferTo(to.getOutputStream());
        } catch (IOException e) {
          // cut
        }
        open.remove(from);
        open.remove(to);
      }, "proxy-pump");
      t.setDaemon(true);
      t.start();
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
    try (SeaportClient client = connect(s)) {
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
         SeaportClient owner = SeaportClient.builder().address(proxy.address).ttl(Duration.ofSeconds(2)).connect()) {
      Registration reg = owner.register("web@1.2.3", RegisterOptions.defaults());
      try (SeaportClient.Watch events = watcher.watch("web")) {
        assertEquals("EXISTING", events.next().kind());
        assertEquals("SYNCED", events.next().kind());
        proxy.cut();
        // The owner's session is the one with a 2s ttl: resumed, and never opened again.
        String resumed = sessionOf(s.awaitLogged("session resumed", 1).get(0));
        assertEquals(sessionOf(s.logged("ttl_ms=2000").get(0)), resumed);
        // Twice the ttl without a change: the registration was never freed, nor registered again.
        CompletableFuture<WatchEvent> change = CompletableFuture.supplyAsync(events::next);
        assertThrows(TimeoutException.class, () -> change.get(4, TimeUnit.SECONDS), () -> "the watcher saw " + change.join());
        List<Service> still = watcher.query("web");
        assertEquals(List.of(reg.id()), ids(still));
        assertEquals(reg.port(), still.get(0).port());
        assertEquals(1, s.logged("ttl_ms=2000").size(), "the owner opened a second session");
        // The watcher was listening all along: it sees the close.
        owner.close();
        WatchEvent freed = change.get(5, TimeUnit.SECONDS);
        assertEquals("FREED", freed.kind());
        assertEquals(reg.id(), freed.service().id());
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
}
