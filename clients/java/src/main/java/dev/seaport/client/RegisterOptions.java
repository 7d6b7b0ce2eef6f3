package dev.seaport.client;

import java.net.InetAddress;
import java.util.HashMap;
import java.util.Map;

/** Options of a registration: port (0 = assigned), host, id, metadata, and where bind listens. */
public final class RegisterOptions {
  int port;
  String host = "";
  String id = "";
  final Map<String, String> metadata = new HashMap<>();
  /** Null: every local address. */
  InetAddress bindAddress;

  public static RegisterOptions defaults() {
    return new RegisterOptions();
  }

  public RegisterOptions port(int port) {
    this.port = port;
    return this;
  }

  public RegisterOptions host(String host) {
    this.host = host;
    return this;
  }

  public RegisterOptions id(String id) {
    this.id = id;
    return this;
  }

  public RegisterOptions meta(String key, String value) {
    metadata.put(key, value);
    return this;
  }

  /** The local address {@link SeaportClient#bind} listens on; by default every address. */
  public RegisterOptions bindAddress(InetAddress address) {
    this.bindAddress = address;
    return this;
  }
}
