package dev.seaport.client;

import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.NoSuchElementException;
import java.util.Optional;
import java.util.TreeMap;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.function.Predicate;

/**
 * The services matching one pattern, kept current by a watch (no polling), so that lookups and
 * load balancing need no RPC. A snapshot (the first, or one after RESET) is built aside and
 * swapped in at SYNCED, so a lookup never sees a half-built view. Made by {@link
 * SeaportClient#catalog}; close it (or the client) to stop following.
 */
public final class Catalog implements AutoCloseable {
  private final SeaportClient.Watch watch;
  private final Thread thread;
  private final AtomicLong next = new AtomicLong();
  /** What lookups read: every matching service, ordered by id; replaced whole on each change. */
  private volatile List<Service> view = List.of();
  /** What picks choose from: view without the draining services. */
  private volatile List<Service> pickable = List.of();

  // Only the thread that applies events uses these.
  private final Map<String, Service> services = new TreeMap<>();
  /** A snapshot being received, or null. */
  private Map<String, Service> rebuilding = new TreeMap<>();

  Catalog(SeaportClient.Watch watch) {
    this.watch = watch;
    // The first snapshot is read here, so that a refused pattern is the caller's error.
    try {
      while (rebuilding != null) {
        apply(watch.next());
      }
    } catch (RuntimeException e) {
      watch.close();
      throw e;
    }
    thread = new Thread(this::follow, "seaport-catalog");
    thread.setDaemon(true);
    thread.start();
  }

  private void follow() {
    try {
      while (true) {
        apply(watch.next());
      }
    } catch (SeaportException | NoSuchElementException e) {
      // closed: the catalog, or its client
    }
  }

  private void apply(WatchEvent e) {
    switch (e.kind()) {
      case "RESET" -> rebuilding = new TreeMap<>();
      case "EXISTING" -> (rebuilding != null ? rebuilding : services).put(e.service().id(), e.service());
      case "SYNCED" -> {
        if (rebuilding != null) {
          services.clear();
          services.putAll(rebuilding);
          rebuilding = null;
        }
      }
      case "REGISTERED", "UPDATED" -> services.put(e.service().id(), e.service());
      case "FREED" -> services.remove(e.service().id());
      default -> {
        return;
      }
    }
    if (rebuilding == null) {
      publish(List.copyOf(services.values()));
    }
  }

  private synchronized void publish(List<Service> fresh) {
    pickable = fresh.stream().filter(s -> !s.draining()).toList();
    view = fresh;
    notifyAll();
  }

  /** Every matching service, ordered by id, draining ones included. */
  public List<Service> services() {
    return view;
  }

  /** How many services match. */
  public int size() {
    return view.size();
  }

  /** The next service, round robin; picks never choose a draining one. */
  public Optional<Service> pick() {
    return pickExcluding(List.of());
  }

  /** A service chosen at random. */
  public Optional<Service> pickRandom() {
    List<Service> candidates = candidates(List.of());
    return candidates.isEmpty() ? Optional.empty()
        : Optional.of(candidates.get(ThreadLocalRandom.current().nextInt(candidates.size())));
  }

  /** The next service round robin, skipping the ids in exclude (the instances that just failed), for failover. */
  public Optional<Service> pickExcluding(Collection<String> exclude) {
    List<Service> candidates = candidates(exclude);
    return candidates.isEmpty() ? Optional.empty()
        : Optional.of(candidates.get((int) Math.floorMod(next.getAndIncrement(), (long) candidates.size())));
  }

  /** The services a pick may choose: not draining, nor in exclude. */
  private List<Service> candidates(Collection<String> exclude) {
    List<Service> all = pickable;
    if (exclude.isEmpty()) {
      return all;
    }
    List<Service> some = new ArrayList<>(all.size());
    for (Service s : all) {
      if (!exclude.contains(s.id())) {
        some.add(s);
      }
    }
    return some;
  }

  /** Waits until the services satisfy condition, up to timeout; true when they do. */
  public synchronized boolean await(Predicate<List<Service>> condition, Duration timeout) throws InterruptedException {
    long deadline = System.nanoTime() + timeout.toNanos();
    for (long left; !condition.test(view); ) {
      if ((left = deadline - System.nanoTime()) <= 0) {
        return false;
      }
      TimeUnit.NANOSECONDS.timedWait(this, left);
    }
    return true;
  }

  /** Stops following the watch; lookups answer the last view. */
  @Override
  public void close() {
    watch.close();
    try {
      thread.join(1000);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
  }
}
