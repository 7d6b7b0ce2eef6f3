package dev.seaport.client;

import java.util.Map;

/** What happens to a client's session and registrations; see {@link SeaportClient#events()}. */
public sealed interface ClientEvent {
  /** A new session was opened at server, which sees this client at observedHost. */
  record Connected(String server, String observedHost) implements ClientEvent {}

  /** The session was resumed at server after its stream dropped (there, or at another server). */
  record Resumed(String server) implements ClientEvent {}

  /** The session's stream to server failed; the client resumes the session, at the next server if there are several. */
  record Disconnected(String server, String reason) implements ClientEvent {}

  /**
   * After the server lost the session (it restarted, or the ttl passed), a new one holds count of
   * this client's registrations again, with their ids, hosts and ports; failed gives the server's
   * reason for each id it refused (another process took the port, say).
   */
  record Reasserted(int count, Map<String, String> failed) implements ClientEvent {}

  /** A registration of this client's is gone, and why (a registration freed as EXPIRED is re-asserted next). */
  record Freed(String id, FreeReason reason) implements ClientEvent {}

  /** An admin (identity by) freed a registration of this client's: final, it is never re-asserted. Follows its Freed. */
  record Evicted(String id, String by) implements ClientEvent {}
}
