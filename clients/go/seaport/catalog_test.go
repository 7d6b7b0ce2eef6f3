package seaport_test

// A catalog kept by a watch, and its picks.

import (
	"bufio"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// answered is how many method RPCs seaportd's metrics (at admin) count.
func answered(t *testing.T, admin, method string) int {
	reply, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer reply.Body.Close()
	total := 0
	lines := bufio.NewScanner(reply.Body)
	for lines.Scan() {
		line := lines.Text()
		if strings.HasPrefix(line, `seaport_rpcs_total{method="`+method+`",`) {
			n, err := strconv.Atoi(line[strings.LastIndexByte(line, ' ')+1:])
			if err != nil {
				t.Fatalf("metrics line %q: %v", line, err)
			}
			total += n
		}
	}
	return total
}

func TestCatalogFollowsTheWatchAndPicks(t *testing.T) {
	admin := "127.0.0.1:" + strconv.Itoa(freePort(t))
	s := startServer(t, "--admin-listen", admin)
	p := startProxy(t, s.addr)
	owner, reader := dial(t, s.addr), dial(t, p.addr)
	var ids []string
	for _, role := range []string{"web@1.2.3", "web@1.2.4"} {
		reg, err := owner.Register(ctx(t), role)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, reg.ID)
	}
	cat, err := reader.Catalog(ctx(t), "web@1.2.x")
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	if n := cat.Len(); n != 2 {
		t.Fatalf("the catalog starts with %d services, want 2", n)
	}

	// Round robin: each in turn.
	first, _ := cat.Pick()
	second, _ := cat.Pick()
	third, _ := cat.Pick()
	if first.ID == second.ID || third.ID != first.ID {
		t.Fatalf("round robin picked %s, %s, %s", first.ID, second.ID, third.ID)
	}
	for range 10 {
		if got, ok := cat.PickExcluding(ids[0]); !ok || got.ID != ids[1] {
			t.Fatalf("pick excluding %s gave %+v %v", ids[0], got, ok)
		}
	}
	if got, ok := cat.PickExcluding(ids...); ok {
		t.Fatalf("pick excluding every instance gave %+v", got)
	}
	seen := map[string]bool{}
	for range 200 {
		got, ok := cat.PickRandom()
		if !ok {
			t.Fatal("pick random found nothing")
		}
		seen[got.ID] = true
	}
	if len(seen) != 2 {
		t.Fatalf("200 random picks chose only %v", seen)
	}

	// Changes come by the watch, across a reconnect too.
	latest, err := owner.Register(ctx(t), "web@1.2.5")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the catalog to add the new instance", func() bool { return cat.Len() == 3 })
	if _, err := owner.Update(ctx(t), latest.ID, map[string]string{"zone": "b"}, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the catalog to follow the update", func() bool {
		for _, s := range cat.Services() {
			if s.ID == latest.ID {
				return s.Metadata["zone"] == "b"
			}
		}
		return false
	})
	p.cut()
	if err := owner.Free(ctx(t), ids[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.Register(ctx(t), "web@2.0.0"); err != nil { // out of the range
		t.Fatal(err)
	}
	waitFor(t, "the catalog to drop the freed instance", func() bool { return cat.Len() == 2 })
	for _, s := range cat.Services() {
		if s.ID == ids[0] || s.Version == "2.0.0" {
			t.Fatalf("the catalog holds %+v", s)
		}
	}
	if n := p.connections(); n < 2 {
		t.Fatalf("the catalog's watch did not reconnect (%d connections)", n)
	}
	if n := answered(t, admin, "Register"); n < 4 { // the metrics are read right
		t.Fatalf("seaportd counts %d registers, want 4", n)
	}
	if n := answered(t, admin, "Query") + answered(t, admin, "Get"); n != 0 {
		t.Fatalf("%d queries: the catalog polled", n)
	}
	cat.Close()
	if _, ok := cat.Pick(); !ok {
		t.Fatal("a closed catalog keeps its last view")
	}
}
