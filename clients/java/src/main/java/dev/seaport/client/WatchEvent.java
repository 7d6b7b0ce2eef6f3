package dev.seaport.client;

/** One watch event; kind is EXISTING, SYNCED, REGISTERED, UPDATED, FREED or RESET; service is null for SYNCED and RESET. */
public record WatchEvent(String kind, Service service, long revision) {}
