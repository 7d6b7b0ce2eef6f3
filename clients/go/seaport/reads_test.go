package seaport_test

// Get's wait told to the server, and watches that resume from a revision.

import (
	"context"
	"regexp"
	"testing"
	"time"

	"github.com/seaport-dev/seaport/clients/go/seaport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestGetTimeoutIsTheServersWait(t *testing.T) {
	s := startServer(t)
	c := dial(t, s.addr)
	// No deadline on ctx: only the timeout sent as timeout_ms can end the wait, and the server's message says so.
	start := time.Now()
	_, err := c.GetTimeout(context.Background(), "nobody", 300*time.Millisecond)
	took := time.Since(start)
	if status.Code(err) != codes.DeadlineExceeded || !regexp.MustCompile(`no service matched "nobody" within 30\dms`).MatchString(status.Convert(err).Message()) {
		t.Fatalf("want the server's DEADLINE_EXCEEDED after 300ms, got %v", err)
	}
	if took < 300*time.Millisecond || took > time.Second {
		t.Fatalf("the get ended after %v, want about 300ms", took)
	}
	// A ctx deadline is the server's wait too.
	short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := c.Get(short, "nobody"); status.Code(err) != codes.DeadlineExceeded || !regexp.MustCompile(`no service matched "nobody" within \d+ms`).MatchString(status.Convert(err).Message()) {
		t.Fatalf("want the server's DEADLINE_EXCEEDED, got %v", err)
	}
	// A match in time ends the wait with it.
	owner := dial(t, s.addr)
	got := make(chan error, 1)
	go func() {
		found, err := c.GetTimeout(context.Background(), "web", 10*time.Second)
		if err == nil && len(found) != 1 {
			err = status.Errorf(codes.Internal, "got %v", found)
		}
		got <- err
	}()
	if _, err := owner.Register(ctx(t), "web@1.2.3"); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}

func TestWatchResumesAfterARevision(t *testing.T) {
	s := startServer(t)
	c := dial(t, s.addr)
	events, err := c.Watch(ctx(t), "web")
	if err != nil {
		t.Fatal(err)
	}
	if e := next(t, events); e.Kind != "SYNCED" {
		t.Fatalf("want SYNCED, got %+v", e)
	}
	a, err := c.Register(ctx(t), "web@1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	registered := next(t, events)
	if registered.Kind != "REGISTERED" || registered.Service.ID != a.ID {
		t.Fatalf("want REGISTERED, got %+v", registered)
	}
	if _, err := c.Update(ctx(t), a.ID, map[string]string{"zone": "b"}, false); err != nil {
		t.Fatal(err)
	}
	b, err := c.Register(ctx(t), "web@1.2.4")
	if err != nil {
		t.Fatal(err)
	}
	// From the revision of a's registration: the changes after it, no snapshot.
	resumed, err := c.Watch(ctx(t), "web", seaport.SinceRevision(registered.Revision))
	if err != nil {
		t.Fatal(err)
	}
	if e := next(t, resumed); e.Kind != "UPDATED" || e.Service.ID != a.ID || e.Service.Metadata["zone"] != "b" || e.Revision <= registered.Revision {
		t.Fatalf("want UPDATED %s zone=b, got %+v", a.ID, e)
	}
	if e := next(t, resumed); e.Kind != "REGISTERED" || e.Service.ID != b.ID {
		t.Fatalf("want REGISTERED %s, got %+v", b.ID, e)
	}
}

func TestAWatchResumesAcrossAReconnectWithNoSnapshot(t *testing.T) {
	s := startServer(t)
	p := startProxy(t, s.addr)
	owner, reader := dial(t, s.addr), dial(t, p.addr)
	a, err := owner.Register(ctx(t), "web@1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	events := watchSnapshot(t, reader, a)
	p.cut()
	// Most likely made while the watch reconnects; either way each comes
	// once, as a change after the last revision seen, and no snapshot
	// (EXISTING) is sent again: only SYNCED, once the watch has caught up.
	if _, err := owner.Update(ctx(t), a.ID, map[string]string{"zone": "b"}, false); err != nil {
		t.Fatal(err)
	}
	if err := owner.Free(ctx(t), a.ID); err != nil {
		t.Fatal(err)
	}
	var changes []string
	for len(changes) < 2 {
		switch e := next(t, events); e.Kind {
		case "SYNCED":
		case "UPDATED":
			if e.Service.Metadata["zone"] != "b" {
				t.Fatalf("want UPDATED zone=b, got %+v", e)
			}
			changes = append(changes, e.Kind)
		case "FREED":
			if e.Reason != seaport.ReasonOwner {
				t.Fatalf("want FREED by its owner, got %+v", e)
			}
			changes = append(changes, e.Kind)
		default:
			t.Fatalf("after the reconnect the watch saw %+v", e)
		}
	}
	if changes[0] != "UPDATED" || changes[1] != "FREED" {
		t.Fatalf("saw %v, want UPDATED then FREED", changes)
	}
	if n := p.connections(); n < 2 {
		t.Fatalf("the watch did not reconnect through the proxy (%d connections)", n)
	}
}
