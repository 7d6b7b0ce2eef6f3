package seaport_test

// Sessions only for writers, resumed after a dropped connection, and ended
// by an admin's free of their last registration.

import (
	"os"
	"path/filepath"
	"regexp"
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
