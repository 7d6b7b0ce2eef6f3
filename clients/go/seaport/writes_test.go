package seaport_test

// Bind, and the three ways of changing metadata.

import (
	"fmt"
	"maps"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/seaport-dev/seaport/clients/go/seaport"
)

// takenPort listens on 127.0.0.1 on a port whose next one is free, and
// returns that port; the listener stays open for the test.
func takenPort(t *testing.T) int {
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		if next, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port+1)); err == nil {
			next.Close()
			t.Cleanup(func() { l.Close() })
			return port
		}
		l.Close()
	}
	t.Fatal("no two adjacent free ports")
	return 0
}

func TestBindListensOnTheRegisteredPortSkippingOneTakenLocally(t *testing.T) {
	taken := takenPort(t)
	s := startServer(t, "--port-range", fmt.Sprintf("%d-%d", taken, taken+1))
	c := dial(t, s.addr)
	l, reg, err := c.Bind(ctx(t), "web@1.2.3", seaport.ListenHost("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if reg.Port != uint32(taken+1) || l.Addr().(*net.TCPAddr).Port != taken+1 {
		t.Fatalf("bound %v registered on %d, want both on %d", l.Addr(), reg.Port, taken+1)
	}
	found, err := c.Query(ctx(t), "web")
	if err != nil || len(found) != 1 || found[0].ID != reg.ID {
		t.Fatalf("want only the bound registration left, got %v %v", found, err)
	}
	accepted := make(chan error, 1)
	go func() {
		conn, err := l.Accept()
		if err == nil {
			conn.Close()
		}
		accepted <- err
	}()
	conn, err := net.Dial("tcp", found[0].Address())
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if err := <-accepted; err != nil {
		t.Fatal(err)
	}
}

func TestBindGivesUpAfterAFewPortsTakenLocallyAndLeavesNothing(t *testing.T) {
	taken := takenPort(t)
	s := startServer(t, "--port-range", fmt.Sprintf("%d-%d", taken, taken+1), "--port-quarantine", "0s")
	other := dial(t, s.addr)
	if _, err := other.Register(ctx(t), "db@1.0.0", seaport.Port(uint32(taken+1))); err != nil {
		t.Fatal(err)
	}
	// The registry has only the locally taken port left to assign.
	events := make(chan seaport.ClientEvent, 256)
	c := dial(t, s.addr, seaport.WithEvents(events))
	_, _, err := c.Bind(ctx(t), "web@1.2.3", seaport.ListenHost("127.0.0.1"))
	if err == nil || !strings.Contains(err.Error(), "could not listen on any of 5 registered ports") || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("want bind to give up after 5 ports, got %v", err)
	}
	for range 5 {
		if e := await(t, events, seaport.Freed); e.Reason != seaport.ReasonOwner {
			t.Fatalf("want each try freed, got %+v", e)
		}
	}
	// An explicit port is tried once.
	if _, _, err := c.Bind(ctx(t), "web@1.2.3", seaport.Port(uint32(taken)), seaport.ListenHost("127.0.0.1")); err == nil || !strings.Contains(err.Error(), "any of 1 registered ports") {
		t.Fatalf("want bind on a taken explicit port to fail at once, got %v", err)
	}
	if found, err := c.Query(ctx(t), "web"); err != nil || len(found) != 0 {
		t.Fatalf("a failed bind left %v %v", found, err)
	}
}

func TestUpdateReplacesMergesAndRemovesKeys(t *testing.T) {
	s := startServer(t)
	c := dial(t, s.addr, seaport.WithTTL(5*time.Second))
	reg, err := c.Register(ctx(t), "web@1.2.3", seaport.Metadata(map[string]string{"zone": "a", "tier": "1"}))
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		what   string
		update func() (seaport.Service, error)
		want   map[string]string
	}{
		{"replace", func() (seaport.Service, error) {
			return c.Update(ctx(t), reg.ID, map[string]string{"zone": "b"}, false)
		}, map[string]string{"zone": "b"}},
		{"merge", func() (seaport.Service, error) {
			return c.Update(ctx(t), reg.ID, map[string]string{"tier": "2"}, true)
		}, map[string]string{"zone": "b", "tier": "2"}},
		{"merge and remove", func() (seaport.Service, error) {
			return c.MergeMetadata(ctx(t), reg.ID, map[string]string{"rack": "r1"}, "zone")
		}, map[string]string{"tier": "2", "rack": "r1"}},
	}
	for _, step := range steps {
		got, err := step.update()
		if err != nil || !maps.Equal(got.Metadata, step.want) {
			t.Fatalf("%s: got %v %v, want %v", step.what, got.Metadata, err, step.want)
		}
		found, err := c.Query(ctx(t), "web")
		if err != nil || len(found) != 1 || !maps.Equal(found[0].Metadata, step.want) {
			t.Fatalf("%s: the registry has %v %v, want %v", step.what, found, err, step.want)
		}
	}
	// Re-asserted after a restart with the metadata as it is now.
	s.stop()
	s.start()
	waitFor(t, "the registration coming back", func() bool {
		found, err := c.Query(ctx(t), "web")
		return err == nil && len(found) == 1 && maps.Equal(found[0].Metadata, steps[2].want)
	})
}
