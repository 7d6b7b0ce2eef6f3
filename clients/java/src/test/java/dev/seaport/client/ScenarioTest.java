package dev.seaport.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import java.io.IOException;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The shared client scenario (docs/client-scenario.md) against a real seaportd. */
class ScenarioTest {
  private final List<Seaportd> servers = new ArrayList<>();

  static String binary(String name, String env) {
    String path = System.getenv(env);
    return path != null ? path : Path.of("..", "..", "target", "debug", name).toAbsolutePath().normalize().toString();
  }

  /** A seaportd child process on 127.0.0.1. */
  static final class Seaportd {
    final String address;
    final List<String> flags;
    Process process;

    Seaportd(List<String> flags) throws Exception {
      try (ServerSocket s = new ServerSocket(0)) {
        address = "127.0.0.1:" + s.getLocalPort();
      }
      this.flags = flags;
      start();
    }

    void start() throws Exception {
      List<String> command = new ArrayList<>(List.of(binary("seaportd", "SEAPORTD"), "--listen", address, "--drain-delay", "0s", "--log", "warn"));
      command.addAll(flags);
      process = new ProcessBuilder(command).inheritIO().start();
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
  }

  Seaportd start(String... flags) throws Exception {
    Seaportd s = new Seaportd(List.of(flags));
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

  @Test
  void overMtlsACertificateRegistersAndNoCertificateIsRefused(@TempDir Path tmp) throws Exception {
    Path pki = tmp.resolve("pki");
    Process init = new ProcessBuilder(binary("seaportctl", "SEAPORTCTL"), "certs", "init", pki.toString(), "--client", "duke")
        .redirectErrorStream(true).start();
    init.getInputStream().readAllBytes();
    assertEquals(0, init.waitFor());
    Seaportd s = start("--tls-cert", pki.resolve("server.pem").toString(), "--tls-key", pki.resolve("server-key.pem").toString(),
        "--client-ca", pki.resolve("ca.pem").toString());
    byte[] ca = Files.readAllBytes(pki.resolve("ca.pem"));
    try (SeaportClient client = SeaportClient.builder().address(s.address)
        .tls(ca, Files.readAllBytes(pki.resolve("client-duke.pem")), Files.readAllBytes(pki.resolve("client-duke-key.pem"))).connect()) {
      assertEquals("duke", client.register("web@1.2.3", RegisterOptions.defaults()).service().owner());
    }
    SeaportException refused = assertThrows(SeaportException.class,
        () -> SeaportClient.builder().address(s.address).tls(ca, null, null).connect());
    assertEquals(Status.Code.UNAUTHENTICATED, refused.code());
  }
}
