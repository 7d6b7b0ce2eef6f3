package dev.seaport.client;

import io.grpc.Status;
import io.grpc.StatusRuntimeException;

/** A refused call: the gRPC status code and the server's message, which says what to fix. */
public final class SeaportException extends RuntimeException {
  private final Status.Code code;

  public SeaportException(Status.Code code, String message) {
    super(message + " (" + code + ")");
    this.code = code;
  }

  static SeaportException of(StatusRuntimeException e) {
    String description = e.getStatus().getDescription();
    return new SeaportException(e.getStatus().getCode(), description == null ? "" : description);
  }

  /** The gRPC status code. */
  public Status.Code code() {
    return code;
  }

  /** The server's message. */
  public String serverMessage() {
    String m = getMessage();
    return m.substring(0, m.length() - (" (" + code + ")").length());
  }
}
