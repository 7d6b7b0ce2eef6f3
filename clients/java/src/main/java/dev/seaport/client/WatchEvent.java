package dev.seaport.client;

/**
 * One watch event; kind is EXISTING, SYNCED, REGISTERED, UPDATED, FREED or RESET; service is null
 * for SYNCED and RESET; reason says why a FREED service went (null for other kinds, and when an
 * update moved the service out of the watched set).
 */
public record WatchEvent(String kind, Service service, long revision, FreeReason reason) {}
