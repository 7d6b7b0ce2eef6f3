package dev.seaport.client;

import java.util.Map;

/** One registration; draining when its instance is stopping and should get no new traffic. */
public record Service(
    String id, String name, String version, String host, int port, Map<String, String> metadata,
    String namespace, String owner, boolean draining) {

  static Service of(dev.seaport.v1.Service s) {
    return new Service(s.getId(), s.getName(), s.getVersion(), s.getHost(), s.getPort(),
        Map.copyOf(s.getMetadataMap()), s.getNamespace(), s.getOwner(), s.getDraining());
  }

  /** host:port. */
  public String address() {
    return host.contains(":") ? "[" + host + "]:" + port : host + ":" + port;
  }
}
