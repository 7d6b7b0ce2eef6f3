package seaport_test

// Draining registrations, a graceful close, and a server that stops.

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/seaport-dev/seaport/clients/go/seaport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestDrainMarksARegistrationThatGetSkips(t *testing.T) {
	s := startServer(t)
	c, watcher := dial(t, s.addr), dial(t, s.addr)
	a, err := c.Register(ctx(t), "web@1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	events := watchSnapshot(t, watcher, a)
	b, err := c.Register(ctx(t), "web@1.2.4")
	if err != nil {
		t.Fatal(err)
	}
	if e := next(t, events); e.Kind != "REGISTERED" || e.Service.ID != b.ID {
		t.Fatalf("want REGISTERED %s, got %+v", b.ID, e)
	}

	drained, err := c.Drain(ctx(t), a.ID)
	if err != nil || !drained.Draining || drained.ID != a.ID {
		t.Fatalf("drain: %+v %v", drained, err)
	}
	if e := next(t, events); e.Kind != "UPDATED" || e.Service.ID != a.ID || !e.Service.Draining {
		t.Fatalf("want UPDATED %s draining, got %+v", a.ID, e)
	}
	// Draining again answers the same and tells watchers nothing; an update keeps it draining.
	if again, err := c.Drain(ctx(t), a.ID); err != nil || !again.Draining {
		t.Fatalf("drain again: %+v %v", again, err)
	}
	if _, err := c.Update(ctx(t), a.ID, map[string]string{"zone": "b"}, false); err != nil {
		t.Fatal(err)
	}
	if e := next(t, events); e.Kind != "UPDATED" || e.Service.Metadata["zone"] != "b" || !e.Service.Draining {
		t.Fatalf("want UPDATED zone=b still draining (and nothing from draining again), got %+v", e)
	}

	found, err := watcher.Query(ctx(t), "web")
	if err != nil || len(found) != 2 {
		t.Fatalf("query: %v %v", found, err)
	}
	for _, f := range found {
		if f.Draining != (f.ID == a.ID) {
			t.Fatalf("query answers %+v; want only %s draining", f, a.ID)
		}
	}
	if got, err := watcher.Get(ctx(t), "web"); err != nil || len(got) != 1 || got[0].ID != b.ID {
		t.Fatalf("get: %v %v, want only %s, which is not draining", got, err, b.ID)
	}
	if _, err := c.Drain(ctx(t), b.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := watcher.GetTimeout(context.Background(), "web", 300*time.Millisecond); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("want get to wait while every match drains, got %v", err)
	}
	if _, err := c.Drain(ctx(t), "no-such-id"); status.Code(err) != codes.NotFound {
		t.Fatalf("want NOT_FOUND draining an unknown id, got %v", err)
	}
}

func TestCatalogPicksSkipDrainingInstances(t *testing.T) {
	s := startServer(t)
	owner, reader := dial(t, s.addr), dial(t, s.addr)
	a, err := owner.Register(ctx(t), "web@1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	b, err := owner.Register(ctx(t), "web@1.2.4")
	if err != nil {
		t.Fatal(err)
	}
	cat, err := reader.Catalog(ctx(t), "web")
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	if _, err := owner.Drain(ctx(t), a.ID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the catalog to see the drain", func() bool {
		for _, s := range cat.Services() {
			if s.ID == a.ID {
				return s.Draining
			}
		}
		return false
	})
	for range 20 {
		if got, ok := cat.Pick(); !ok || got.ID != b.ID {
			t.Fatalf("pick chose %+v %v, want %s", got, ok, b.ID)
		}
		if got, ok := cat.PickRandom(); !ok || got.ID != b.ID {
			t.Fatalf("pick random chose %+v %v, want %s", got, ok, b.ID)
		}
	}
	if got, ok := cat.PickExcluding(b.ID); ok {
		t.Fatalf("pick excluding the only instance not draining chose %+v", got)
	}
	if n := cat.Len(); n != 2 {
		t.Fatalf("the catalog lists %d services, want both, the draining one too", n)
	}
}

func TestCloseWithADrainWaitDrainsThenFrees(t *testing.T) {
	s := startServer(t)
	const wait = 500 * time.Millisecond
	c := dial(t, s.addr, seaport.WithDrainWait(wait))
	watcher := dial(t, s.addr)
	reg, err := c.Register(ctx(t), "web@1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	events := watchSnapshot(t, watcher, reg)
	closing := time.Now()
	go c.Close()
	if e := next(t, events); e.Kind != "UPDATED" || e.Service.ID != reg.ID || !e.Service.Draining {
		t.Fatalf("want UPDATED draining first, got %+v", e)
	}
	e := next(t, events)
	freed := time.Since(closing)
	if e.Kind != "FREED" || e.Service.ID != reg.ID || e.Reason != seaport.ReasonClosed {
		t.Fatalf("want FREED by the close, got %+v", e)
	}
	if freed < wait || freed > wait+2*time.Second {
		t.Fatalf("freed %v after Close, want the drain wait %v and then at once", freed, wait)
	}
	t.Logf("drained at once, freed %v after Close (drain wait %v)", freed, wait)
}

func TestAReassertedRegistrationIsDrainedAgain(t *testing.T) {
	s := startServer(t)
	events := make(chan seaport.ClientEvent, 256)
	c := dial(t, s.addr, seaport.WithTTL(5*time.Second), seaport.WithEvents(events))
	drained, err := c.Register(ctx(t), "web@1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	serving, err := c.Register(ctx(t), "web@1.2.4")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Drain(ctx(t), drained.ID); err != nil {
		t.Fatal(err)
	}
	s.stop()
	s.start()
	if e := await(t, events, seaport.Reasserted); e.Count != 2 {
		t.Fatalf("re-asserted %d, want 2", e.Count)
	}
	found, err := c.Query(ctx(t), "web")
	if err != nil || len(found) != 2 {
		t.Fatalf("after the restart: %v %v", found, err)
	}
	want := map[string]*seaport.Registration{drained.ID: drained, serving.ID: serving}
	for _, f := range found {
		r := want[f.ID]
		if r == nil || f.Port != r.Port || f.Draining != (f.ID == drained.ID) {
			t.Fatalf("after the restart %+v; want %s draining and %s not, on their ports", f, drained.ID, serving.ID)
		}
	}
}

func TestAStoppingServerSendsTheSessionToTheNextAddress(t *testing.T) {
	first, second := startServer(t), startServer(t)
	const ttl = 10 * time.Second
	events := make(chan seaport.ClientEvent, 256)
	c := dialAll(t, []string{first.addr, second.addr}, seaport.WithTTL(ttl), seaport.WithEvents(events))
	reg, err := c.Register(ctx(t), "web@1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	await(t, events, seaport.Connected) // Dial's
	if e := await(t, events, seaport.Connected); e.Server != first.addr {
		t.Fatalf("want the session at %s, got %+v", first.addr, e)
	}

	stopping := time.Now()
	first.terminate()
	exited := make(chan time.Duration, 1)
	go func() {
		<-first.exited
		exited <- time.Since(stopping)
	}()
	if e := await(t, events, seaport.Disconnected); e.Server != first.addr || !strings.Contains(e.Err.Error(), "stopping") {
		t.Fatalf("want Disconnected from %s, stopping, got %+v", first.addr, e)
	}
	// The memory store keeps sessions in their server: a new one at the next, with the registration re-asserted.
	if e := await(t, events, seaport.Connected); e.Server != second.addr {
		t.Fatalf("want a session at %s, got %+v", second.addr, e)
	}
	if e := await(t, events, seaport.Reasserted); e.Count != 1 {
		t.Fatalf("re-asserted %d at the next address, want 1", e.Count)
	}
	moved := time.Since(stopping)
	if moved > ttl/5 {
		t.Fatalf("the registration came back %v after SIGTERM, want well under the ttl %v", moved, ttl)
	}
	found, err := c.Query(ctx(t), "web")
	if err != nil || len(found) != 1 || found[0].ID != reg.ID || found[0].Port != reg.Port {
		t.Fatalf("at %s: %v %v, want id %s port %d", second.addr, found, err, reg.ID, reg.Port)
	}
	// It waits for session streams to go: the client's went at once.
	select {
	case after := <-exited:
		t.Logf("registration re-asserted at the next address %v after SIGTERM; the first seaportd exited after %v", moved, after)
	case <-time.After(5 * time.Second):
		t.Fatal("the stopping seaportd did not exit within 5s")
	}
}
