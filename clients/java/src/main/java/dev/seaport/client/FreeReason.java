package dev.seaport.client;

/** Why a registration was freed. */
public enum FreeReason {
  /** Its owner freed it. */
  OWNER,
  /** Its session was closed by its client. */
  CLOSED,
  /** Its session's ttl passed with no heartbeat (or the server that held it restarted). */
  EXPIRED,
  /** An admin freed it; final, its owner does not register it again. */
  ADMIN;

  /** The reason a FREED watch event carries; null when it gives none (the service left the watched set by an update). */
  static FreeReason of(dev.seaport.v1.FreeReason reason) {
    return switch (reason) {
      case FREE_REASON_OWNER -> OWNER;
      case FREE_REASON_CLOSED -> CLOSED;
      case FREE_REASON_EXPIRED -> EXPIRED;
      case FREE_REASON_ADMIN -> ADMIN;
      case FREE_REASON_UNSPECIFIED, UNRECOGNIZED -> null;
    };
  }
}
