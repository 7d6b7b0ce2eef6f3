package seaport_test

// Sessions only for writers, resumed after a dropped connection, and ended
// by an admin's free of their last registration.

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/seaport-dev/seaport/clients/go/seaport"
)

func TestReadsOpenNoSessionAndTheFirstRegisterOpensOne(t *testing.T) {
	s := startServer(t)
	c := dial(t, s.addr)
	if found, err := c.Query(ctx(t), "web"); err != nil || len(found) != 0 {
		t.Fatalf("query: %v %v", found, err)
	}
	if found, err := c.Get(ctx(t), "seaport"); err != nil || len(found) != 1 { // seaportd registers itself
		t.Fatalf("get: %v %v", found, err)
	}
	events, err := c.Watch(ctx(t), "web")
	if err != nil {
		t.Fatal(err)
	}
	if e := next(t, events); e.Kind != "SYNCED" {
		t.Fatalf("want SYNCED, got %+v", e)
	}
	if strings.Contains(s.log(), "session opened") {
		t.Fatal("reading opened a session")
	}
	reg, err := c.Register(ctx(t), "web@1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(s.log(), "session opened"); n != 1 {
		t.Fatalf("registering opened %d sessions, want 1", n)
	}
	if err := c.Free(ctx(t), reg.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "closing the session with the last free", func() bool { return strings.Contains(s.log(), "session closed") })
	if found, err := c.Query(ctx(t), "web"); err != nil || len(found) != 0 {
		t.Fatalf("query after the free: %v %v", found, err)
	}
	if n := strings.Count(s.log(), "session opened"); n != 1 {
		t.Fatalf("%d sessions opened, want 1", n)
	}
}

// resumed checks that the session of reg, held through a connection that
// was just dropped, is resumed: the server says so, the watcher (connected
// directly) sees nothing for quiet, and an update through the client is its
// next event.
func resumed(t *testing.T, s *server, c *seaport.Client, watcher *seaport.Client, events <-chan seaport.Event, reg *seaport.Registration, quiet time.Duration) {
	t.Helper()
	waitFor(t, "resuming the session", func() bool { return strings.Contains(s.log(), "session resumed") })
	select {
	case e := <-events:
		t.Fatalf("the watcher saw %s for %+v", e.Kind, e.Service)
	case <-time.After(quiet):
	}
	found, err := watcher.Query(ctx(t), "web")
	if err != nil || len(found) != 1 || found[0].ID != reg.ID || found[0].Port != reg.Port {
		t.Fatalf("after the drop: %v %v, want id %s port %d", found, err, reg.ID, reg.Port)
	}
	if n := strings.Count(s.log(), "session opened"); n != 1 {
		t.Fatalf("%d sessions opened, want 1", n)
	}
	if _, err := c.Update(ctx(t), reg.ID, map[string]string{"zone": "b"}, false); err != nil { // the session is still this client's
		t.Fatal(err)
	}
	if e := next(t, events); e.Kind != "UPDATED" || e.Service.ID != reg.ID || e.Service.Port != reg.Port {
		t.Fatalf("want UPDATED, got %+v", e)
	}
}

func watchSnapshot(t *testing.T, watcher *seaport.Client, reg *seaport.Registration) <-chan seaport.Event {
	events, err := watcher.Watch(ctx(t), "web")
	if err != nil {
		t.Fatal(err)
	}
	if e := next(t, events); e.Kind != "EXISTING" || e.Service.ID != reg.ID {
		t.Fatalf("want EXISTING, got %+v", e)
	}
	if e := next(t, events); e.Kind != "SYNCED" {
		t.Fatalf("want SYNCED, got %+v", e)
	}
	return events
}

func TestADroppedConnectionResumesTheSession(t *testing.T) {
	s := startServer(t)
	p := startProxy(t, s.addr)
	watcher := dial(t, s.addr)
	const ttl = 2 * time.Second
	c := dial(t, p.addr, seaport.WithTTL(ttl))
	reg, err := c.Register(ctx(t), "web@1.2.3", seaport.Metadata(map[string]string{"zone": "a"}))
	if err != nil {
		t.Fatal(err)
	}
	events := watchSnapshot(t, watcher, reg)
	p.cut()
	// Twice the ttl: had the session not been resumed, it would have expired and freed web.
	resumed(t, s, c, watcher, events, reg, 2*ttl)
	if n := p.connections(); n < 2 {
		t.Fatalf("the client did not reconnect through the proxy (%d connections)", n)
	}
}

func TestADroppedConnectionResumesTheSessionThroughTheNextAddress(t *testing.T) {
	s := startServer(t)
	first, second := startProxy(t, s.addr), startProxy(t, s.addr)
	watcher := dial(t, s.addr)
	const ttl = 2 * time.Second
	c, err := seaport.Dial(ctx(t), []string{first.addr, second.addr}, seaport.WithTTL(ttl))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	reg, err := c.Register(ctx(t), "web@1.2.3", seaport.Metadata(map[string]string{"zone": "a"}))
	if err != nil {
		t.Fatal(err)
	}
	events := watchSnapshot(t, watcher, reg)
	first.close()
	resumed(t, s, c, watcher, events, reg, 0)
	if n := second.connections(); n < 1 {
		t.Fatal("the client did not reconnect through the second address")
	}
}

func TestAnAdminsFreeIsFinalAndEndsTheOwnersSession(t *testing.T) {
	dir, read := certificates(t, "gopher", "ops")
	policy := filepath.Join(t.TempDir(), "policy.toml")
	if err := os.WriteFile(policy, []byte("admins = [\"ops\"]\n[[allow]]\nidentities = [\"gopher\"]\nnames = [\"web\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, append(tlsFlags(dir), "--policy", policy)...)
	owner := dial(t, s.addr, seaport.WithTTL(time.Second), seaport.WithTLS(read("ca.pem"), read("client-gopher.pem"), read("client-gopher-key.pem")))
	admin := dial(t, s.addr, seaport.WithTLS(read("ca.pem"), read("client-ops.pem"), read("client-ops-key.pem")))
	reg, err := owner.Register(ctx(t), "web@1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`session opened session=(\d+) .*identity=gopher`).FindStringSubmatch(s.log())
	if m == nil {
		t.Fatal("no session opened for gopher")
	}
	if err := admin.Free(ctx(t), reg.ID); err != nil {
		t.Fatal(err)
	}
	// Told at its next ping, the owner forgets the registration and, holding nothing, closes its session.
	closed := "session closed session=" + m[1] + " freed=0"
	waitFor(t, "the owner closing its session", func() bool { return strings.Contains(s.log(), closed) })
}

func TestARestartReassertsOnlyTheClientsOwnRegistrations(t *testing.T) {
	dir, read := certificates(t, "gopher", "ops")
	policy := filepath.Join(t.TempDir(), "policy.toml")
	if err := os.WriteFile(policy, []byte("admins = [\"ops\"]\n[[allow]]\nidentities = [\"gopher\"]\nnames = [\"web\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, append(tlsFlags(dir), "--policy", policy)...)
	gopher := func(opts ...seaport.Option) *seaport.Client {
		return dial(t, s.addr, append(opts, seaport.WithTTL(time.Second), seaport.WithTLS(read("ca.pem"), read("client-gopher.pem"), read("client-gopher-key.pem")))...)
	}
	events := make(chan seaport.ClientEvent, 256)
	owner, neighbour := gopher(seaport.WithEvents(events)), gopher()
	admin := dial(t, s.addr, seaport.WithTLS(read("ca.pem"), read("client-ops.pem"), read("client-ops-key.pem")))
	kept, err := owner.Register(ctx(t), "web@1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	evicted, err := owner.Register(ctx(t), "web@1.2.4")
	if err != nil {
		t.Fatal(err)
	}
	theirs, err := neighbour.Register(ctx(t), "web@3.0.0") // same identity, another client
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.Free(ctx(t), evicted.ID); err != nil {
		t.Fatal(err)
	}
	if e := await(t, events, seaport.Evicted); e.ID != evicted.ID || e.By != "ops" {
		t.Fatalf("want Evicted %s by ops, got %+v", evicted.ID, e)
	}
	if e := await(t, events, seaport.Freed); e.ID != evicted.ID || e.Reason != seaport.ReasonAdmin {
		t.Fatalf("want Freed %s by an admin, got %+v", evicted.ID, e)
	}

	s.stop()
	s.start()
	if e := await(t, events, seaport.Freed); e.ID != kept.ID || e.Reason != seaport.ReasonExpired {
		t.Fatalf("want Freed %s, expired, got %+v", kept.ID, e)
	}
	if e := await(t, events, seaport.Reasserted); e.Count != 1 {
		t.Fatalf("re-asserted %d registrations, want 1 (not the evicted one, nor the neighbour's)", e.Count)
	}
	waitFor(t, "the neighbour re-asserting its own", func() bool {
		found, err := admin.Query(ctx(t), "web")
		return err == nil && len(found) == 2
	})
	found, err := admin.Query(ctx(t), "web")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint32{kept.ID: kept.Port, theirs.ID: theirs.Port}
	for _, f := range found {
		if port, ok := want[f.ID]; !ok || port != f.Port {
			t.Fatalf("after the restart: %+v, want %v by id and port", found, want)
		}
	}
}

func TestClientEventsTellWhatHappensToTheSession(t *testing.T) {
	s := startServer(t)
	p := startProxy(t, s.addr)
	watcher := dial(t, s.addr)
	events := make(chan seaport.ClientEvent, 256)
	c := dial(t, p.addr, seaport.WithTTL(2*time.Second), seaport.WithEvents(events))
	if e := await(t, events, seaport.Connected); e.Server != p.addr || e.ObservedHost != "" {
		t.Fatalf("want Connected to %s with no session, got %+v", p.addr, e)
	}
	a, err := c.Register(ctx(t), "web@1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Register(ctx(t), "web@1.2.4")
	if err != nil {
		t.Fatal(err)
	}
	if e := await(t, events, seaport.Connected); e.Server != p.addr || e.ObservedHost != "127.0.0.1" {
		t.Fatalf("want Connected with a session, seen from 127.0.0.1, got %+v", e)
	}
	watch, err := watcher.Watch(ctx(t), "web")
	if err != nil {
		t.Fatal(err)
	}

	if err := c.Free(ctx(t), a.ID); err != nil {
		t.Fatal(err)
	}
	if e := await(t, events, seaport.Freed); e.ID != a.ID || e.Reason != seaport.ReasonOwner {
		t.Fatalf("want Freed %s by its owner, got %+v", a.ID, e)
	}
	if e := nextFreed(t, watch); e.Service.ID != a.ID || e.Reason != seaport.ReasonOwner {
		t.Fatalf("the watcher saw %+v, want %s freed by its owner", e, a.ID)
	}

	p.cut()
	if e := await(t, events, seaport.Disconnected); e.Server != p.addr || e.Err == nil {
		t.Fatalf("want Disconnected from %s with a reason, got %+v", p.addr, e)
	}
	if e := await(t, events, seaport.Resumed); e.Server != p.addr {
		t.Fatalf("want Resumed through %s, got %+v", p.addr, e)
	}

	s.stop()
	s.start()
	await(t, events, seaport.Disconnected)
	if e := await(t, events, seaport.Freed); e.ID != b.ID || e.Reason != seaport.ReasonExpired {
		t.Fatalf("want Freed %s, expired, got %+v", b.ID, e)
	}
	if e := await(t, events, seaport.Connected); e.ObservedHost == "" {
		t.Fatalf("want Connected with a new session, got %+v", e)
	}
	if e := await(t, events, seaport.Reasserted); e.Count != 1 {
		t.Fatalf("re-asserted %d registrations, want 1", e.Count)
	}

	watch, err = watcher.Watch(ctx(t), "web") // the old watch's server is gone
	if err != nil {
		t.Fatal(err)
	}
	if e := next(t, watch); e.Kind != "EXISTING" || e.Service.ID != b.ID {
		t.Fatalf("want EXISTING %s, got %+v", b.ID, e)
	}
	c.Close()
	if e := await(t, events, seaport.Freed); e.ID != b.ID || e.Reason != seaport.ReasonClosed {
		t.Fatalf("want Freed %s by the close, got %+v", b.ID, e)
	}
	if e := nextFreed(t, watch); e.Service.ID != b.ID || e.Reason != seaport.ReasonClosed {
		t.Fatalf("the watcher saw %+v, want %s freed by the close", e, b.ID)
	}
}

// nextFreed skips the watch's events up to the next FREED.
func nextFreed(t *testing.T, events <-chan seaport.Event) seaport.Event {
	t.Helper()
	for {
		if e := next(t, events); e.Kind == "FREED" {
			return e
		}
	}
}

func TestASilentPathIsLeftAndTheSessionResumedOverTheNextAddress(t *testing.T) {
	s := startServer(t)
	p := startProxy(t, s.addr)
	watcher := dial(t, s.addr)
	const ttl = 3 * time.Second
	events := make(chan seaport.ClientEvent, 256)
	c := dialAll(t, []string{p.addr, s.addr}, seaport.WithTTL(ttl), seaport.WithEvents(events))
	reg, err := c.Register(ctx(t), "web@1.2.3", seaport.Metadata(map[string]string{"zone": "a"}))
	if err != nil {
		t.Fatal(err)
	}
	await(t, events, seaport.Connected) // Dial's
	if e := await(t, events, seaport.Connected); e.Server != p.addr || e.ObservedHost == "" {
		t.Fatalf("want the session opened through the proxy, got %+v", e)
	}
	watch := watchSnapshot(t, watcher, reg)

	silenced := time.Now()
	p.silence()
	e := await(t, events, seaport.Disconnected)
	if e.Server != p.addr || !strings.Contains(e.Err.Error(), "no answer to pings") {
		t.Fatalf("want the proxy's path declared dead, got %+v", e)
	}
	detected := time.Since(silenced)
	if e := await(t, events, seaport.Resumed); e.Server != s.addr {
		t.Fatalf("want the session resumed at %s, got %+v", s.addr, e)
	}
	took := time.Since(silenced)
	t.Logf("silent path declared dead after %v, session resumed over the next address after %v (ttl %v)", detected, took, ttl)
	if took >= ttl {
		t.Fatalf("the session was resumed %v after the path went silent, not within its ttl %v", took, ttl)
	}
	// Twice the ttl: had the session not been resumed, it would have expired and freed web.
	resumed(t, s, c, watcher, watch, reg, 2*ttl)
}

func TestDialAndReadsUseTheNextAddressWhenOneIsDown(t *testing.T) {
	s := startServer(t)
	p := startProxy(t, s.addr)
	down := "127.0.0.1:" + strconv.Itoa(freePort(t))
	events := make(chan seaport.ClientEvent, 256)
	c := dialAll(t, []string{down, p.addr, s.addr}, seaport.WithEvents(events))
	if e := await(t, events, seaport.Connected); e.Server != p.addr {
		t.Fatalf("want Connected to %s, the first that answers, got %+v", p.addr, e)
	}
	reg, err := c.Register(ctx(t), "web@1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	p.close()
	// One call: the proxy refuses, and the query goes on to the next address.
	found, err := c.Query(ctx(t), "web")
	if err != nil || len(found) != 1 || found[0].ID != reg.ID {
		t.Fatalf("query after the proxy closed: %v %v", found, err)
	}
	if e := await(t, events, seaport.Resumed); e.Server != s.addr {
		t.Fatalf("want the session resumed at %s, got %+v", s.addr, e)
	}
}
