// Command etcd-bench measures etcd with the load shapes seaport-bench uses
// for seaportd: a registration is a lease grant plus a put with that lease,
// a query is a prefix range, and fan-out is one put seen by N watchers.
// It prints one JSON object of figures.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

type result struct {
	Scenario string  `json:"scenario"`
	Rate     float64 `json:"rate_per_s"`
	P50us    int64   `json:"p50_us"`
	P99us    int64   `json:"p99_us"`
	Note     string  `json:"note"`
}

func quantiles(lat []time.Duration) (int64, int64) {
	if len(lat) == 0 {
		return 0, 0
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	q := func(p float64) int64 { return lat[int(float64(len(lat)-1)*p)].Microseconds() }
	return q(0.5), q(0.99)
}

// closedLoop runs op from n workers for d, one client per 125 workers.
func closedLoop(clients []*clientv3.Client, n int, d time.Duration, op func(c *clientv3.Client, w, i int) []time.Duration) ([]time.Duration, time.Duration) {
	var mu sync.Mutex
	var all []time.Duration
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var mine []time.Duration
			end := time.Now().Add(d)
			for i := 0; time.Now().Before(end); i++ {
				mine = append(mine, op(clients[w%len(clients)], w, i)...)
			}
			mu.Lock()
			all = append(all, mine...)
			mu.Unlock()
		}(w)
	}
	wg.Wait()
	return all, time.Since(start)
}

func main() {
	endpoint := flag.String("endpoint", "127.0.0.1:2379", "etcd client URL host:port")
	duration := flag.Duration("duration", 5*time.Second, "how long each throughput scenario runs")
	sessions := flag.Int("sessions", 100, "concurrent writers (seaport's sessions)")
	keys := flag.Int("keys", 1000, "keys present for the prefix range")
	watchers := flag.Int("watchers", 1000, "watchers for fan-out")
	registerOnly := flag.Bool("register-only", false, "only the lease grant + put scenario")
	flag.Parse()

	var clients []*clientv3.Client
	for i := 0; i < 8; i++ {
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{*endpoint}, DialTimeout: 5 * time.Second})
		if err != nil {
			fmt.Fprintln(os.Stderr, "etcd-bench:", err)
			os.Exit(1)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	ctx := context.Background()
	var results []result

	lat, wall := closedLoop(clients, *sessions, *duration, func(c *clientv3.Client, w, i int) []time.Duration {
		t := time.Now()
		lease, err := c.Grant(ctx, 60)
		if err != nil {
			panic(err)
		}
		if _, err := c.Put(ctx, fmt.Sprintf("/svc/bench-%d/%d", w, i), "127.0.0.1:10000", clientv3.WithLease(lease.ID)); err != nil {
			panic(err)
		}
		return []time.Duration{time.Since(t)}
	})
	p50, p99 := quantiles(lat)
	results = append(results, result{fmt.Sprintf("lease grant + put, %d writers", *sessions), float64(len(lat)) / wall.Seconds(), p50, p99, "per registration (2 RPCs)"})
	if *registerOnly {
		out, _ := json.MarshalIndent(results, "", "  ")
		fmt.Println(string(out))
		return
	}

	for i := 0; i < *keys; i++ {
		if _, err := clients[0].Put(ctx, fmt.Sprintf("/q/svc-%d/1.%d.0", i/4, i%4), "h:1"); err != nil {
			panic(err)
		}
	}
	for _, q := range []struct{ name, prefix string }{{"hit", "/q/svc-42/1."}, {"miss", "/q/nosuch/"}} {
		lat, wall = closedLoop(clients, 32, *duration, func(c *clientv3.Client, w, i int) []time.Duration {
			t := time.Now()
			if _, err := c.Get(ctx, q.prefix, clientv3.WithPrefix()); err != nil {
				panic(err)
			}
			return []time.Duration{time.Since(t)}
		})
		p50, p99 = quantiles(lat)
		results = append(results, result{fmt.Sprintf("prefix range %s (of %d keys)", q.name, *keys), float64(len(lat)) / wall.Seconds(), p50, p99, ""})
	}

	var worst time.Duration
	for round := 0; round < 3; round++ {
		key := fmt.Sprintf("/fan/%d", round)
		ready := sync.WaitGroup{}
		done := make(chan time.Time, *watchers)
		wctx, cancel := context.WithCancel(ctx)
		for w := 0; w < *watchers; w++ {
			ready.Add(1)
			go func(c *clientv3.Client) {
				ch := c.Watch(clientv3.WithRequireLeader(wctx), key, clientv3.WithCreatedNotify())
				<-ch // created
				ready.Done()
				for resp := range ch {
					if len(resp.Events) > 0 {
						done <- time.Now()
						return
					}
				}
			}(clients[w%len(clients)])
		}
		ready.Wait()
		t0 := time.Now()
		if _, err := clients[0].Put(ctx, key, "x"); err != nil {
			panic(err)
		}
		last := t0
		for i := 0; i < *watchers; i++ {
			at := <-done
			if at.After(last) {
				last = at
			}
		}
		cancel()
		if d := last.Sub(t0); d > worst {
			worst = d
		}
	}
	results = append(results, result{fmt.Sprintf("watch fan-out, %d watchers", *watchers), 0, 0, worst.Microseconds(), "p99 column: worst of 3 rounds until all have it"})

	out, _ := json.MarshalIndent(results, "", "  ")
	fmt.Println(string(out))
}
