package dev.seaport.client;

/** A registration of this client's: its id, host, port and the full record. */
public record Registration(String id, String host, int port, Service service) {}
