package dev.seaport.client;

import java.time.Duration;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * One subscriber's events, from its subscription on, in order. Each subscriber has a queue of its
 * own, so one that reads slowly never holds the session up: past 256 unread events, the oldest
 * are dropped.
 */
public final class ClientEvents implements AutoCloseable {
  private static final int CAPACITY = 256;
  private final BlockingQueue<ClientEvent> queue = new ArrayBlockingQueue<>(CAPACITY);
  private final Runnable unsubscribe;

  ClientEvents(java.util.function.Consumer<ClientEvents> unsubscribe) {
    this.unsubscribe = () -> unsubscribe.accept(this);
  }

  synchronized void add(ClientEvent event) {
    while (!queue.offer(event)) {
      queue.poll();
    }
  }

  /** The next event, waiting up to timeout; null when none came in time. */
  public ClientEvent poll(Duration timeout) throws InterruptedException {
    return queue.poll(timeout.toNanos(), TimeUnit.NANOSECONDS);
  }

  /** The next event, waiting for it. */
  public ClientEvent take() throws InterruptedException {
    return queue.take();
  }

  /** Stops the subscription; events already queued can still be read. */
  @Override
  public void close() {
    unsubscribe.run();
  }
}
