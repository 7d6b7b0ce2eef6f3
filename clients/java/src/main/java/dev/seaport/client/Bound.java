package dev.seaport.client;

import java.net.ServerSocket;

/** What {@link SeaportClient#bind} returns: a socket listening on the registration's port, and the registration. */
public record Bound(ServerSocket socket, Registration registration) {}
