package seaport

import (
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/status"
)

// Catalog is a local, always-current view of the services matching one
// pattern, kept by a watch (never by polling), so lookups and load
// balancing need no RPC. Close it when done.
type Catalog struct {
	mu         sync.RWMutex
	services   map[string]Service
	sorted     []Service          // services by id, rebuilt on each change
	rebuilding map[string]Service // a snapshot being received; swapped in at SYNCED
	next       atomic.Uint64
	stop       context.CancelFunc
}

// Catalog starts following pattern and returns once the first snapshot is
// in (or ctx is done). The catalog follows the watch across reconnects and
// failover until Close or the client closes.
func (c *Client) Catalog(ctx context.Context, pattern string) (*Catalog, error) {
	watching, stop := context.WithCancel(context.Background())
	events, err := c.Watch(watching, pattern)
	if err != nil {
		stop()
		return nil, err
	}
	cat := &Catalog{services: map[string]Service{}, rebuilding: map[string]Service{}, stop: stop}
	synced := make(chan struct{})
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		var once sync.Once
		for e := range events {
			if cat.apply(e) {
				once.Do(func() { close(synced) })
			}
		}
	}()
	select {
	case <-synced:
		return cat, nil
	case <-ended:
		return nil, errClosed
	case <-ctx.Done():
		stop()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// apply changes the view by e and says whether e was SYNCED.
func (cat *Catalog) apply(e Event) bool {
	cat.mu.Lock()
	defer cat.mu.Unlock()
	target := cat.services
	if cat.rebuilding != nil {
		target = cat.rebuilding
	}
	switch e.Kind {
	case "RESET":
		cat.rebuilding = map[string]Service{}
		return false
	case "SYNCED":
		if cat.rebuilding != nil {
			cat.services, cat.rebuilding = cat.rebuilding, nil
		}
	case "EXISTING":
		target[e.Service.ID] = *e.Service
	case "REGISTERED", "UPDATED":
		cat.services[e.Service.ID] = *e.Service
	case "FREED":
		delete(cat.services, e.Service.ID)
	default:
		return false
	}
	if cat.rebuilding == nil {
		cat.sorted = cat.sorted[:0]
		for _, s := range cat.services {
			cat.sorted = append(cat.sorted, s)
		}
		slices.SortFunc(cat.sorted, func(a, b Service) int { return strings.Compare(a.ID, b.ID) })
	}
	return e.Kind == "SYNCED"
}

// Services is every matching service, ordered by id, draining ones too.
func (cat *Catalog) Services() []Service {
	cat.mu.RLock()
	defer cat.mu.RUnlock()
	return slices.Clone(cat.sorted)
}

// Len is how many services match.
func (cat *Catalog) Len() int {
	cat.mu.RLock()
	defer cat.mu.RUnlock()
	return len(cat.sorted)
}

// Pick is the next service that is not draining, round robin; false when
// there is none.
func (cat *Catalog) Pick() (Service, bool) { return cat.PickExcluding() }

// PickRandom is a service that is not draining, chosen at random; false
// when there is none.
func (cat *Catalog) PickRandom() (Service, bool) {
	candidates := cat.candidates()
	if len(candidates) == 0 {
		return Service{}, false
	}
	return candidates[rand.IntN(len(candidates))], true
}

// PickExcluding is Pick skipping the ids in exclude too (the instances
// that just failed), for failover; false when none is left.
func (cat *Catalog) PickExcluding(exclude ...string) (Service, bool) {
	candidates := cat.candidates(exclude...)
	if len(candidates) == 0 {
		return Service{}, false
	}
	return candidates[(cat.next.Add(1)-1)%uint64(len(candidates))], true
}

// candidates are the services a pick may choose: not draining, nor in exclude.
func (cat *Catalog) candidates(exclude ...string) []Service {
	cat.mu.RLock()
	defer cat.mu.RUnlock()
	candidates := make([]Service, 0, len(cat.sorted))
	for _, s := range cat.sorted {
		if !s.Draining && !slices.Contains(exclude, s.ID) {
			candidates = append(candidates, s)
		}
	}
	return candidates
}

// Close stops following the watch; the view stays as it was.
func (cat *Catalog) Close() { cat.stop() }
