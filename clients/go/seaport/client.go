// Package seaport is a small Go client for the Seaport service registry.
//
// Query, Get and Watch open no session: a reader holds nothing on the
// server, and under mTLS a reader without a client certificate (which the
// server refuses a session) can still read. The first Register opens a
// session, held by a goroutine on the Heartbeat stream; the last Free, or
// Close, ends it. When the stream drops the goroutine reconnects, to the
// next address when several were given, with exponential backoff and full
// jitter, and resumes the session, so nothing is freed and watchers see
// nothing. Only when the server no longer knows the session (a restart, or
// its ttl passed) does it open a new one and re-register exactly this
// client's own registrations with their ids, hosts and ports. An admin's free
// (Evicted) is final: the registration is forgotten, never registered again.
//
//	c, err := seaport.Dial(ctx, []string{"127.0.0.1:9090"})
//	reg, err := c.Register(ctx, "web@1.2.3", seaport.Metadata(map[string]string{"zone": "a"}))
//	services, err := c.Get(ctx, "web@1.2.x") // waits, until ctx's deadline
//
// Errors from the server are gRPC status errors: status.Code(err) and
// status.Convert(err).Message() give the code and the server's message.
package seaport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	pb "github.com/seaport-dev/seaport/clients/go/seaportv1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Service is one registration.
type Service struct {
	ID, Name, Version, Host string
	Port                    uint32
	Metadata                map[string]string
	Namespace, Owner        string
}

// Address is host:port.
func (s Service) Address() string {
	if strings.Contains(s.Host, ":") {
		return fmt.Sprintf("[%s]:%d", s.Host, s.Port)
	}
	return fmt.Sprintf("%s:%d", s.Host, s.Port)
}

func serviceOf(s *pb.Service) Service {
	return Service{s.GetId(), s.GetName(), s.GetVersion(), s.GetHost(), s.GetPort(), s.GetMetadata(), s.GetNamespace(), s.GetOwner()}
}

// Registration is a registration of this client's.
type Registration struct {
	ID      string
	Host    string
	Port    uint32
	Service Service
}

// Event is one watch event; Kind is EXISTING, SYNCED, REGISTERED, UPDATED, FREED or RESET.
type Event struct {
	Kind     string
	Service  *Service
	Revision uint64
}

type options struct {
	namespace string
	ttl       time.Duration
	creds     credentials.TransportCredentials
}

// Option configures Dial.
type Option func(*options) error

// WithNamespace sets the namespace for registrations and queries.
func WithNamespace(ns string) Option { return func(o *options) error { o.namespace = ns; return nil } }

// WithTTL sets the session ttl to ask for; without it the server's --default-ttl applies.
func WithTTL(ttl time.Duration) Option { return func(o *options) error { o.ttl = ttl; return nil } }

// WithTLS speaks TLS, trusting caPEM; certPEM and keyPEM (may be nil) are the client certificate for mTLS.
func WithTLS(caPEM, certPEM, keyPEM []byte) Option {
	return func(o *options) error {
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(caPEM) {
			return errors.New("seaport: no certificate in the CA PEM")
		}
		config := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
		if certPEM != nil {
			pair, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				return fmt.Errorf("seaport: client certificate: %w", err)
			}
			config.Certificates = []tls.Certificate{pair}
		}
		o.creds = credentials.NewTLS(config)
		return nil
	}
}

// Client is a connection to the registry, holding a session while it has
// registrations. Close it when done.
type Client struct {
	opts  options
	addrs []string

	connMu     sync.Mutex // guards the connection, shared by reads, writes and the session
	conn       *grpc.ClientConn
	stub       pb.RegistryClient
	next       int  // index in addrs of conn
	gen        int  // grows each time the connection moves to another address
	connClosed bool // set by Close

	mu      sync.Mutex    // guards the session, owned and changed
	changed chan struct{} // closed and replaced whenever a session comes up or ends
	sess    *session      // nil while the client holds no registration
	owned   map[string]*pb.RegisterRequest
	keepers sync.WaitGroup // the sessions' goroutines

	closing chan struct{}
	once    sync.Once
}

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

var (
	errClosed      = status.Error(codes.Canceled, "seaport: the client is closed")
	errSessionLost = errors.New("session lost")
)

// refusedError is the server refusing this client a session (no
// certificate, or not its session): retrying cannot help.
type refusedError struct{ err error }

func (e *refusedError) Error() string { return e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }

// maxBackoff bounds the waits between reconnects.
const maxBackoff = 5 * time.Second

// gRPC's own reconnect backoff grows to two minutes; bounded like the
// session's, a connection comes back soon enough to resume a session within
// its ttl.
var connectParams = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: maxBackoff},
	MinConnectTimeout: 20 * time.Second,
}

// jitter is full jitter: a random wait below a bound that doubles with each
// failure, so clients do not return in step.
func jitter(failures int, limit time.Duration) time.Duration {
	bound := min(limit, 100*time.Millisecond<<min(failures, 10))
	if bound <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(bound)))
}

// Dial connects to the first address that answers, and fails when none does
// before ctx is done. It opens no session: the first Register does.
func Dial(ctx context.Context, addrs []string, opts ...Option) (*Client, error) {
	if len(addrs) == 0 {
		return nil, errors.New("seaport: give at least one server address")
	}
	c := &Client{opts: options{creds: insecure.NewCredentials()}, addrs: addrs,
		changed: make(chan struct{}), owned: map[string]*pb.RegisterRequest{}, closing: make(chan struct{})}
	for _, o := range opts {
		if err := o(&c.opts); err != nil {
			return nil, err
		}
	}
	if err := c.waitReady(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Client) unreachable(err error) error {
	return status.Errorf(codes.Unavailable, "no Seaport server reachable at %s: %v", strings.Join(c.addrs, ", "), err)
}

// connection returns the shared connection's stub, the connection, and the
// generation to report a failure of.
func (c *Client) connection() (pb.RegistryClient, *grpc.ClientConn, int, error) {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	if c.connClosed {
		return nil, nil, 0, errClosed
	}
	if c.conn == nil {
		conn, err := grpc.NewClient(c.addrs[c.next], grpc.WithTransportCredentials(c.opts.creds), grpc.WithConnectParams(connectParams))
		if err != nil {
			return nil, nil, c.gen, fmt.Errorf("seaport: %s: %w", c.addrs[c.next], err)
		}
		c.conn, c.stub = conn, pb.NewRegistryClient(conn)
	}
	return c.stub, c.conn, c.gen, nil
}

// failed moves on to the next address after the server of generation gen
// failed, unless someone already has. With one address the connection is
// kept: gRPC reconnects it.
func (c *Client) failed(gen int) {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	if gen != c.gen || len(c.addrs) == 1 || c.connClosed {
		return
	}
	if c.conn != nil {
		_ = c.conn.Close() // cancels the calls still on it; their callers retry on the next server
	}
	c.conn, c.stub = nil, nil
	c.next = (c.next + 1) % len(c.addrs)
	c.gen++
}

// failedOn moves on when err says the server is unavailable.
func (c *Client) failedOn(err error, gen int) {
	if status.Code(err) == codes.Unavailable {
		c.failed(gen)
	}
}

// waitReady connects to the first address that answers before ctx is done.
func (c *Client) waitReady(ctx context.Context) error {
	for failures := 1; ; failures++ {
		_, conn, gen, err := c.connection()
		if err != nil {
			return err
		}
		if ready(ctx, conn, len(c.addrs) > 1) {
			return nil
		}
		if ctx.Err() != nil {
			return c.unreachable(ctx.Err())
		}
		c.failed(gen)
		select {
		case <-time.After(jitter(failures, maxBackoff)):
		case <-ctx.Done():
			return c.unreachable(ctx.Err())
		}
	}
}

// ready waits until conn is up (true), or fails to connect when another
// address is left to try, or ctx is done (false).
func ready(ctx context.Context, conn *grpc.ClientConn, others bool) bool {
	for {
		state := conn.GetState()
		switch {
		case state == connectivity.Ready:
			return true
		case state == connectivity.TransientFailure && others, state == connectivity.Shutdown:
			return false
		case state == connectivity.Idle:
			conn.Connect()
		}
		if !conn.WaitForStateChange(ctx, state) {
			return false
		}
	}
}

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

// keep is a session's goroutine: it holds the session across dropped
// streams, resuming it, until it ends.
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
		stub, _, gen, err := c.connection()
		if err == nil {
			err = c.hold(s, stub)
		}
		c.mu.Lock()
		if s.stub != nil {
			failures = 0 // it was up: this is a first failure
		}
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
		c.failed(gen)
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

// hold opens or resumes s on one Heartbeat stream and holds it until it is
// closed (nil). It returns errSessionLost when the server does not know the
// session, a *refusedError when it will not give this client one, and
// another error when the stream breaks.
func (c *Client) hold(s *session, stub pb.RegistryClient) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := stub.Heartbeat(ctx)
	if err != nil {
		return err
	}
	c.mu.Lock()
	id := s.id
	c.mu.Unlock()
	first := &pb.HeartbeatRequest{Kind: &pb.HeartbeatRequest_Open{Open: &pb.OpenSession{TtlMs: uint64(c.opts.ttl.Milliseconds()), ClientName: "seaport-go"}}}
	if id != "" {
		first = &pb.HeartbeatRequest{Kind: &pb.HeartbeatRequest_Resume{Resume: &pb.ResumeSession{SessionId: id}}}
	}
	if err := stream.Send(first); err != nil {
		return err
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
		return err
	}
	opened := reply.GetOpened()
	if opened == nil {
		return errors.New("seaport: the server's first Heartbeat reply is not `opened`")
	}
	if !opened.GetResumed() {
		c.reassert(stub, opened.GetSessionId())
	}
	ttl := time.Duration(opened.GetTtlMs()) * time.Millisecond
	c.mu.Lock()
	s.id, s.ttl, s.stub = opened.GetSessionId(), ttl, stub
	c.notifyLocked()
	c.mu.Unlock()

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
			return err
		}
		switch {
		case reply.GetClosed() != nil:
			return nil
		case reply.GetEvicted() != nil:
			c.evicted(s, reply.GetEvicted().GetId())
		}
	}
}

// lost forgets s's id, which the server no longer knows, so the next stream opens a new session.
func (c *Client) lost(s *session) {
	c.mu.Lock()
	s.id = ""
	c.mu.Unlock()
}

// evicted forgets a registration an admin freed: that is final, so it is
// never registered again, and a session left with none ends.
func (c *Client) evicted(s *session, id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.owned, id)
	c.endIfIdleLocked(s)
}

func (c *Client) reassert(stub pb.RegistryClient, session string) {
	c.mu.Lock()
	requests := make([]*pb.RegisterRequest, 0, len(c.owned))
	for _, r := range c.owned {
		again := proto.Clone(r).(*pb.RegisterRequest)
		again.SessionId = session
		requests = append(requests, again)
	}
	c.mu.Unlock()
	for _, r := range requests {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, _ = stub.Register(ctx, r) // another process may hold the port now; the rest still go back
		cancel()
	}
}

// RegisterOption sets a field of a registration.
type RegisterOption func(*pb.RegisterRequest)

// Port asks for an explicit port (default: one the registry assigns).
func Port(p uint32) RegisterOption { return func(r *pb.RegisterRequest) { r.Port = p } }

// Host sets the host (default: the address the server sees).
func Host(h string) RegisterOption { return func(r *pb.RegisterRequest) { r.Host = h } }

// ID sets the registration id (default: generated).
func ID(id string) RegisterOption { return func(r *pb.RegisterRequest) { r.Id = id } }

// Metadata sets the metadata.
func Metadata(m map[string]string) RegisterOption {
	return func(r *pb.RegisterRequest) { r.Metadata = m }
}

// Register registers role ("name@1.2.3") under this client's session,
// opening the session if none is open.
func (c *Client) Register(ctx context.Context, role string, opts ...RegisterOption) (*Registration, error) {
	s, err := c.acquire()
	if err != nil {
		return nil, err
	}
	defer c.release(s)
	stub, session, err := c.live(ctx, s)
	if err != nil {
		return nil, err
	}
	req := &pb.RegisterRequest{SessionId: session, Role: role, Namespace: c.opts.namespace}
	for _, o := range opts {
		o(req)
	}
	reply, err := stub.Register(ctx, req)
	if err != nil {
		return nil, err
	}
	registered := serviceOf(reply.GetService())
	remembered := proto.Clone(req).(*pb.RegisterRequest)
	remembered.Id, remembered.Host, remembered.Port = registered.ID, registered.Host, registered.Port
	c.mu.Lock()
	c.owned[registered.ID] = remembered
	c.mu.Unlock()
	return &Registration{ID: registered.ID, Host: registered.Host, Port: registered.Port, Service: registered}, nil
}

// Update replaces (or, with merge, merges into) a registration's metadata.
func (c *Client) Update(ctx context.Context, id string, metadata map[string]string, merge bool) (Service, error) {
	s, err := c.acquire()
	if err != nil {
		return Service{}, err
	}
	defer c.release(s)
	stub, session, err := c.live(ctx, s)
	if err != nil {
		return Service{}, err
	}
	reply, err := stub.Update(ctx, &pb.UpdateRequest{SessionId: session, Id: id, Metadata: metadata, Merge: merge})
	if err != nil {
		return Service{}, err
	}
	updated := serviceOf(reply.GetService())
	c.mu.Lock()
	if r, ok := c.owned[id]; ok {
		r.Metadata = updated.Metadata
	}
	c.mu.Unlock()
	return updated, nil
}

// Free frees a registration; freeing this client's last one ends its session.
func (c *Client) Free(ctx context.Context, id string) error {
	s, err := c.acquire()
	if err != nil {
		return err
	}
	defer c.release(s)
	stub, session, err := c.live(ctx, s)
	if err != nil {
		return err
	}
	_, err = stub.Free(ctx, &pb.FreeRequest{SessionId: session, Id: id})
	if err == nil || status.Code(err) == codes.NotFound {
		c.mu.Lock()
		delete(c.owned, id)
		c.mu.Unlock()
	}
	return err
}

func services(list []*pb.Service) []Service {
	out := make([]Service, len(list))
	for i, s := range list {
		out[i] = serviceOf(s)
	}
	return out
}

// Query returns the services matching pattern ("name", "name@range" or "")
// now. It opens no session; when the server is unavailable the next call
// tries the next address.
func (c *Client) Query(ctx context.Context, pattern string) ([]Service, error) {
	stub, _, gen, err := c.connection()
	if err != nil {
		return nil, err
	}
	reply, err := stub.Query(ctx, &pb.QueryRequest{Pattern: pattern, Namespace: c.opts.namespace})
	if err != nil {
		c.failedOn(err, gen)
		return nil, err
	}
	return services(reply.GetServices()), nil
}

// Get waits until something matches pattern, across reconnects, or until
// ctx's deadline (DEADLINE_EXCEEDED). It opens no session.
func (c *Client) Get(ctx context.Context, pattern string) ([]Service, error) {
	for failures := 1; ; failures++ {
		stub, _, gen, err := c.connection()
		if err != nil {
			return nil, err
		}
		reply, err := stub.Get(ctx, &pb.GetRequest{Pattern: pattern, Namespace: c.opts.namespace})
		if err == nil {
			return services(reply.GetServices()), nil
		}
		c.failedOn(err, gen)
		// Unavailable: the server is down; Canceled: the client moved on to another one.
		if code := status.Code(err); (code != codes.Unavailable && code != codes.Canceled) || ctx.Err() != nil {
			return nil, err
		}
		select {
		case <-time.After(jitter(failures, maxBackoff)):
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		case <-c.closing:
			return nil, errClosed
		}
	}
}

// Watch streams the matching services (EXISTING), SYNCED, then every
// change, across reconnects; the channel closes when ctx is done or the
// client closes. A bad pattern is reported at once. It opens no session.
func (c *Client) Watch(ctx context.Context, pattern string) (<-chan Event, error) {
	stub, _, gen, err := c.connection()
	if err != nil {
		return nil, err
	}
	stream, err := stub.Watch(ctx, &pb.WatchRequest{Pattern: pattern, Namespace: c.opts.namespace})
	if err != nil {
		c.failedOn(err, gen)
		return nil, err
	}
	first, err := stream.Recv()
	if err != nil {
		c.failedOn(err, gen)
		return nil, err
	}
	events := make(chan Event, 64)
	go func() {
		defer close(events)
		var since uint64
		deliver := func(e *pb.WatchEvent) bool {
			ev := Event{Kind: e.GetKind().String(), Revision: e.GetRevision()}
			if e.GetService() != nil {
				s := serviceOf(e.GetService())
				ev.Service = &s
			}
			if e.GetKind() != pb.WatchEvent_EXISTING && e.GetKind() != pb.WatchEvent_RESET {
				since = e.GetRevision()
			}
			select {
			case events <- ev:
				return true
			case <-ctx.Done():
				return false
			}
		}
		if !deliver(first) {
			return
		}
		for failures := 0; ; {
			for stream != nil {
				e, err := stream.Recv()
				if err != nil {
					c.failedOn(err, gen)
					break
				}
				failures = 0
				if !deliver(e) {
					return
				}
			}
			failures++
			select {
			case <-time.After(jitter(failures, maxBackoff)):
			case <-ctx.Done():
				return
			case <-c.closing:
				return
			}
			if stub, _, gen, err = c.connection(); err != nil {
				return
			}
			if stream, err = stub.Watch(ctx, &pb.WatchRequest{Pattern: pattern, Namespace: c.opts.namespace, SinceRevision: since}); err != nil {
				stream = nil
			}
		}
	}()
	return events, nil
}

// Close ends the session, if any, freeing its registrations, and closes the
// connection.
func (c *Client) Close() {
	c.once.Do(func() {
		c.mu.Lock()
		close(c.closing)
		if c.sess != nil {
			c.sess.stop()
		}
		c.mu.Unlock()
		done := make(chan struct{})
		go func() {
			c.keepers.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
		c.connMu.Lock()
		c.connClosed = true
		if c.conn != nil {
			_ = c.conn.Close()
		}
		c.conn, c.stub = nil, nil
		c.connMu.Unlock()
	})
}
