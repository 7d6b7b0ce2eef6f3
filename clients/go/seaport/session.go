package seaport

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	pb "github.com/seaport-dev/seaport/clients/go/seaportv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// openTimeout bounds the wait for the server's `opened`, so that a silent
// path is left for the next address.
const openTimeout = 5 * time.Second

// session is one session, from the write that opened it to its close; a
// goroutine of its own holds it. Its fields are guarded by Client.mu.
type session struct {
	id    string            // set when opened; kept while the stream is down, to resume
	ttl   time.Duration     // granted
	stub  pb.RegistryClient // set while the stream is up
	fatal error             // the server refused this client a session
	done  bool              // its goroutine has returned
	users int               // writes using it now
	end   chan struct{}     // closed to close the session
	ended bool              // end is closed
}

// stop asks the session's goroutine to close it. Holding Client.mu.
func (s *session) stop() {
	if !s.ended {
		s.ended = true
		close(s.end)
	}
}

// owned is a registration of this client's, as it would be re-asserted.
type owned struct {
	req     *pb.RegisterRequest
	drained bool // drained again when re-asserted
}

var (
	errSessionLost    = errors.New("session lost")
	errServerStopping = errors.New("the server is stopping")
)

// refusedError is the server refusing this client a session (no
// certificate, or not its session): retrying cannot help.
type refusedError struct{ err error }

func (e *refusedError) Error() string { return e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }

// silentError is a path that stopped answering without breaking: the
// connection is replaced rather than left for gRPC to notice.
type silentError struct{ what string }

func (e *silentError) Error() string { return e.what }

// notifyLocked wakes everyone waiting for a session. Holding c.mu.
func (c *Client) notifyLocked() {
	close(c.changed)
	c.changed = make(chan struct{})
}

// acquire returns the session for a write, opening one if there is none;
// give it back with release.
func (c *Client) acquire() (*session, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.closing:
		return nil, errClosed
	default:
	}
	s := c.sess
	if s == nil {
		s = &session{end: make(chan struct{})}
		c.sess = s
		c.keepers.Add(1)
		go c.keep(s)
	}
	s.users++
	return s, nil
}

func (c *Client) release(s *session) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s.users--
	c.endIfIdleLocked(s)
}

// endIfIdleLocked ends s once it holds no registration and no write uses
// it. Holding c.mu.
func (c *Client) endIfIdleLocked(s *session) {
	if s.users == 0 && len(c.owned) == 0 && c.sess == s {
		c.sess = nil
		s.stop()
	}
}

// live waits until s's stream is up and returns its stub and session id.
func (c *Client) live(ctx context.Context, s *session) (pb.RegistryClient, string, error) {
	for {
		c.mu.Lock()
		stub, id, fatal, done, changed := s.stub, s.id, s.fatal, s.done, c.changed
		c.mu.Unlock()
		switch {
		case fatal != nil:
			return nil, "", fatal
		case stub != nil:
			return stub, id, nil
		case done:
			return nil, "", errClosed // a session in use ends only when the client closes
		}
		select {
		case <-changed:
		case <-c.closing:
			return nil, "", errClosed
		case <-ctx.Done():
			return nil, "", c.unreachable(ctx.Err())
		}
	}
}

// write runs call with the session's stub and id, opening the session if
// none is open.
func (c *Client) write(ctx context.Context, call func(stub pb.RegistryClient, session string) error) error {
	s, err := c.acquire()
	if err != nil {
		return err
	}
	defer c.release(s)
	stub, session, err := c.live(ctx, s)
	if err != nil {
		return err
	}
	return call(stub, session)
}

// keep is a session's goroutine: it holds the session across dropped
// streams and silent paths, resuming it, until it ends.
func (c *Client) keep(s *session) {
	defer c.keepers.Done()
	defer func() {
		c.mu.Lock()
		s.stub, s.done = nil, true
		if c.sess == s {
			c.sess = nil
			s.stop()
		}
		c.notifyLocked()
		c.mu.Unlock()
	}()
	failures := 0
	for {
		select {
		case <-s.end:
			return
		default:
		}
		l, err := c.connection()
		if err == nil {
			err = c.hold(s, l)
		}
		c.mu.Lock()
		wasUp, ending := s.stub != nil, s.ended
		s.stub = nil
		resuming, ttl := s.id != "", s.ttl
		var refused *refusedError
		if errors.As(err, &refused) {
			s.fatal = refused.err
		}
		c.mu.Unlock()
		switch {
		case err == nil, refused != nil:
			return
		case errors.Is(err, errSessionLost):
			continue // open a new session at once
		}
		if wasUp {
			failures = 0 // it was up: this is a first failure
			if !ending {
				c.emit(ClientEvent{Kind: Disconnected, Server: l.addr, Err: err})
			}
		}
		var silent *silentError
		c.failed(l.gen, errors.As(err, &silent))
		if errors.Is(err, errServerStopping) && len(c.addrs) > 1 {
			continue // at once to the next address, while the session lives on (or is re-opened there)
		}
		failures++
		limit := maxBackoff
		if resuming && ttl > 0 {
			limit = min(limit, ttl/3) // a session to resume is retried at least every third of its ttl
		}
		select {
		case <-time.After(jitter(failures, limit)):
		case <-s.end:
			return
		}
	}
}

// hold opens or resumes s on one Heartbeat stream over l and holds it until
// it is closed (nil). It returns errSessionLost when the server does not
// know the session, a *refusedError when it will not give this client one,
// a *silentError when the server stops answering, errServerStopping when
// it says it is shutting down, and another error when the stream breaks.
//
// Pings go every third of the ttl and a pong takes a round trip: no answer
// for half the ttl is a dead path, declared while the session can still be
// resumed over another.
func (c *Client) hold(s *session, l link) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var silent atomic.Pointer[silentError]
	watchdog := time.AfterFunc(openTimeout, func() {
		silent.Store(&silentError{fmt.Sprintf("no answer to open or resume within %v", openTimeout)})
		cancel()
	})
	defer watchdog.Stop()
	broken := func(err error) error {
		if e := silent.Load(); e != nil {
			return e
		}
		return err
	}
	stream, err := l.stub.Heartbeat(ctx)
	if err != nil {
		return broken(err)
	}
	c.mu.Lock()
	id := s.id
	c.mu.Unlock()
	first := &pb.HeartbeatRequest{Kind: &pb.HeartbeatRequest_Open{Open: &pb.OpenSession{TtlMs: uint64(c.opts.ttl.Milliseconds()), ClientName: "seaport-go"}}}
	if id != "" {
		first = &pb.HeartbeatRequest{Kind: &pb.HeartbeatRequest_Resume{Resume: &pb.ResumeSession{SessionId: id}}}
	}
	if err := stream.Send(first); err != nil {
		return broken(err)
	}
	reply, err := stream.Recv()
	if err != nil {
		switch status.Code(err) {
		case codes.NotFound:
			if id != "" {
				c.lost(s)
				return errSessionLost
			}
		case codes.Unauthenticated, codes.PermissionDenied:
			return &refusedError{err}
		}
		return broken(err)
	}
	watchdog.Stop()
	opened := reply.GetOpened()
	if opened == nil {
		return errors.New("seaport: the server's first Heartbeat reply is not `opened`")
	}
	ttl := time.Duration(opened.GetTtlMs()) * time.Millisecond
	if opened.GetResumed() {
		c.emit(ClientEvent{Kind: Resumed, Server: l.addr})
	} else {
		c.emit(ClientEvent{Kind: Connected, Server: l.addr, ObservedHost: opened.GetObservedHost()})
		c.reassert(l.stub, opened.GetSessionId())
	}
	c.mu.Lock()
	s.id, s.ttl, s.stub = opened.GetSessionId(), ttl, l.stub
	c.notifyLocked()
	c.mu.Unlock()

	half := max(ttl/2, 100*time.Millisecond)
	dead := &silentError{fmt.Sprintf("no answer to pings for %v, half the session ttl", half)}
	watchdog = time.AfterFunc(half, func() { silent.Store(dead); cancel() })
	defer watchdog.Stop()
	go func() {
		ticker := time.NewTicker(max(ttl/3, 50*time.Millisecond))
		defer ticker.Stop()
		for seq := uint64(1); ; seq++ {
			select {
			case <-ticker.C:
				if stream.Send(&pb.HeartbeatRequest{Kind: &pb.HeartbeatRequest_Ping{Ping: &pb.Ping{Seq: seq}}}) != nil {
					return
				}
			case <-s.end:
				_ = stream.Send(&pb.HeartbeatRequest{Kind: &pb.HeartbeatRequest_Close{Close: &pb.CloseSession{}}})
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		reply, err := stream.Recv()
		if err != nil {
			if status.Code(err) == codes.NotFound {
				c.lost(s)
				return errSessionLost
			}
			return broken(err)
		}
		watchdog.Reset(half)
		switch {
		case reply.GetClosed() != nil:
			c.closed()
			return nil
		case reply.GetEvicted() != nil:
			c.evicted(s, reply.GetEvicted())
		case reply.GetStopping() != nil:
			return errServerStopping
		}
	}
}

// lost forgets s's id, which the server no longer knows, so the next stream
// opens a new session; the registrations it held are gone until re-asserted.
func (c *Client) lost(s *session) {
	c.mu.Lock()
	s.id = ""
	ids := c.ownedIDsLocked()
	c.mu.Unlock()
	c.freed(ids, ReasonExpired)
}

// closed tells, once the client closed its session, that the session's
// registrations are freed. A session ended by the last Free held none.
func (c *Client) closed() {
	select {
	case <-c.closing:
	default:
		return
	}
	c.mu.Lock()
	ids := c.ownedIDsLocked()
	clear(c.owned)
	c.mu.Unlock()
	c.freed(ids, ReasonClosed)
}

// ownedIDsLocked lists this client's registrations by id. Holding c.mu.
func (c *Client) ownedIDsLocked() []string {
	ids := make([]string, 0, len(c.owned))
	for id := range c.owned {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// evicted forgets a registration an admin freed: that is final, so it is
// never registered again, and a session left with none ends.
func (c *Client) evicted(s *session, e *pb.Evicted) {
	c.mu.Lock()
	_, mine := c.owned[e.GetId()]
	delete(c.owned, e.GetId())
	c.endIfIdleLocked(s)
	c.mu.Unlock()
	if mine {
		c.emit(ClientEvent{Kind: Evicted, ID: e.GetId(), By: e.GetBy()})
		c.freed([]string{e.GetId()}, ReasonAdmin)
	}
}

// reassert registers this client's own registrations again under a new
// session, with their ids, hosts, ports and latest metadata.
func (c *Client) reassert(stub pb.RegistryClient, session string) {
	c.mu.Lock()
	again := make([]owned, 0, len(c.owned))
	for _, o := range c.owned {
		r := proto.Clone(o.req).(*pb.RegisterRequest)
		r.SessionId = session
		again = append(again, owned{r, o.drained})
	}
	c.mu.Unlock()
	if len(again) == 0 {
		return
	}
	count := 0
	for _, o := range again {
		if err := reassertOne(stub, o); err != nil { // another process may hold the port now; the rest still go back
			c.emit(ClientEvent{Kind: ReassertFailed, ID: o.req.GetId(), Err: err})
			continue
		}
		count++
	}
	c.emit(ClientEvent{Kind: Reasserted, Count: count})
}

// reassertOne registers o again and, if the client had drained it, drains it again.
func reassertOne(stub pb.RegistryClient, o owned) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := stub.Register(ctx, o.req); err != nil {
		return err
	}
	if o.drained {
		if _, err := stub.Drain(ctx, &pb.DrainRequest{SessionId: o.req.GetSessionId(), Id: o.req.GetId()}); err != nil {
			return fmt.Errorf("draining it again: %w", err)
		}
	}
	return nil
}
