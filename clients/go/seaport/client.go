// Package seaport is a small Go client for the Seaport service registry.
//
// A Client holds one session, kept alive by a goroutine that reconnects with
// exponential backoff and full jitter, resumes the session, and, when the
// server no longer knows it (a restart), opens a new one and re-registers
// exactly this client's own registrations with their ids, hosts and ports.
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
	"google.golang.org/grpc/codes"
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

// Client holds one session with the registry. Close it when done.
type Client struct {
	opts  options
	addrs []string

	mu      sync.Mutex
	changed chan struct{} // closed and replaced whenever the connection changes
	stub    pb.RegistryClient
	session string
	gen     int
	fatal   error
	owned   map[string]*pb.RegisterRequest

	closing chan struct{}
	done    chan struct{}
	once    sync.Once
}

// Dial connects to the first reachable address and opens a session; it
// fails when none answers before ctx is done.
func Dial(ctx context.Context, addrs []string, opts ...Option) (*Client, error) {
	if len(addrs) == 0 {
		return nil, errors.New("seaport: give at least one server address")
	}
	c := &Client{opts: options{creds: insecure.NewCredentials()}, addrs: addrs,
		changed: make(chan struct{}), owned: map[string]*pb.RegisterRequest{}, closing: make(chan struct{}), done: make(chan struct{})}
	for _, o := range opts {
		if err := o(&c.opts); err != nil {
			return nil, err
		}
	}
	go c.run()
	if _, _, _, err := c.current(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// set records a new connection state and wakes everyone waiting on one.
func (c *Client) set(stub pb.RegistryClient, session string, fatal error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stub, c.session = stub, session
	if fatal != nil {
		c.fatal = fatal
	}
	if stub != nil {
		c.gen++
	}
	close(c.changed)
	c.changed = make(chan struct{})
}

// current waits for a session and returns it.
func (c *Client) current(ctx context.Context) (pb.RegistryClient, string, int, error) {
	for {
		c.mu.Lock()
		stub, session, gen, fatal, changed := c.stub, c.session, c.gen, c.fatal, c.changed
		c.mu.Unlock()
		if fatal != nil {
			return nil, "", 0, fatal
		}
		if stub != nil {
			return stub, session, gen, nil
		}
		select {
		case <-changed:
		case <-c.closing:
			return nil, "", 0, status.Error(codes.Canceled, "seaport: the client is closed")
		case <-ctx.Done():
			return nil, "", 0, status.Errorf(codes.Unavailable, "no Seaport server reachable at %s: %v", strings.Join(c.addrs, ", "), ctx.Err())
		}
	}
}

// waitNew waits until the connection differs from generation gen.
func (c *Client) waitNew(ctx context.Context, gen int) {
	for {
		c.mu.Lock()
		now, changed := c.gen, c.changed
		c.mu.Unlock()
		if now != gen {
			return
		}
		select {
		case <-changed:
		case <-c.closing:
			return
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
			return
		}
	}
}

var errSessionLost = errors.New("session lost")

func (c *Client) run() {
	defer close(c.done)
	session, failures := "", 0
	for i := 0; ; i++ {
		select {
		case <-c.closing:
			return
		default:
		}
		next, err := c.hold(c.addrs[i%len(c.addrs)], session)
		switch {
		case err == nil:
			return
		case errors.Is(err, errSessionLost):
			session = ""
			continue
		}
		session = next
		c.set(nil, "", nil)
		failures++
		// Full jitter: spread reconnects so clients do not return in step.
		limit := min(5*time.Second, 100*time.Millisecond<<min(failures, 10))
		select {
		case <-time.After(time.Duration(rand.Int64N(int64(limit)))):
		case <-c.closing:
			return
		}
	}
}

// hold runs one session on one connection; it returns nil when the client
// closed, or an error (and the session id to resume) when the connection failed.
func (c *Client) hold(addr, session string) (string, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(c.opts.creds))
	if err != nil {
		return session, err
	}
	defer conn.Close()
	stub := pb.NewRegistryClient(conn)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := stub.Heartbeat(ctx)
	if err != nil {
		return session, err
	}
	first := &pb.HeartbeatRequest{Kind: &pb.HeartbeatRequest_Open{Open: &pb.OpenSession{TtlMs: uint64(c.opts.ttl.Milliseconds()), ClientName: "seaport-go"}}}
	if session != "" {
		first = &pb.HeartbeatRequest{Kind: &pb.HeartbeatRequest_Resume{Resume: &pb.ResumeSession{SessionId: session}}}
	}
	if err := stream.Send(first); err != nil {
		return session, err
	}
	reply, err := stream.Recv()
	if err != nil {
		switch status.Code(err) {
		case codes.NotFound:
			if session != "" {
				return "", errSessionLost
			}
		case codes.Unauthenticated, codes.PermissionDenied:
			c.set(nil, "", err)
			return "", nil
		}
		return session, err
	}
	opened := reply.GetOpened()
	if !opened.GetResumed() {
		c.reassert(stub, opened.GetSessionId())
	}
	c.set(stub, opened.GetSessionId(), nil)

	interval := max(time.Duration(opened.GetTtlMs())*time.Millisecond/3, 50*time.Millisecond)
	go func() {
		ticker := time.NewTicker(interval)
		defer ticker.Stop()
		for seq := uint64(1); ; seq++ {
			select {
			case <-ticker.C:
				if stream.Send(&pb.HeartbeatRequest{Kind: &pb.HeartbeatRequest_Ping{Ping: &pb.Ping{Seq: seq}}}) != nil {
					return
				}
			case <-c.closing:
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
				return "", errSessionLost
			}
			return opened.GetSessionId(), err
		}
		if reply.GetClosed() != nil {
			return "", nil
		}
	}
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

// Register registers role ("name@1.2.3") under this client's session.
func (c *Client) Register(ctx context.Context, role string, opts ...RegisterOption) (*Registration, error) {
	stub, session, _, err := c.current(ctx)
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
	s := serviceOf(reply.GetService())
	remembered := proto.Clone(req).(*pb.RegisterRequest)
	remembered.Id, remembered.Host, remembered.Port = s.ID, s.Host, s.Port
	c.mu.Lock()
	c.owned[s.ID] = remembered
	c.mu.Unlock()
	return &Registration{ID: s.ID, Host: s.Host, Port: s.Port, Service: s}, nil
}

// Update replaces (or, with merge, merges into) a registration's metadata.
func (c *Client) Update(ctx context.Context, id string, metadata map[string]string, merge bool) (Service, error) {
	stub, session, _, err := c.current(ctx)
	if err != nil {
		return Service{}, err
	}
	reply, err := stub.Update(ctx, &pb.UpdateRequest{SessionId: session, Id: id, Metadata: metadata, Merge: merge})
	if err != nil {
		return Service{}, err
	}
	s := serviceOf(reply.GetService())
	c.mu.Lock()
	if r, ok := c.owned[id]; ok {
		r.Metadata = s.Metadata
	}
	c.mu.Unlock()
	return s, nil
}

// Free frees a registration.
func (c *Client) Free(ctx context.Context, id string) error {
	stub, session, _, err := c.current(ctx)
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

// Query returns the services matching pattern ("name", "name@range" or "") now.
func (c *Client) Query(ctx context.Context, pattern string) ([]Service, error) {
	stub, _, _, err := c.current(ctx)
	if err != nil {
		return nil, err
	}
	reply, err := stub.Query(ctx, &pb.QueryRequest{Pattern: pattern, Namespace: c.opts.namespace})
	if err != nil {
		return nil, err
	}
	return services(reply.GetServices()), nil
}

// Get waits until something matches pattern, across reconnects, or until
// ctx's deadline (DEADLINE_EXCEEDED).
func (c *Client) Get(ctx context.Context, pattern string) ([]Service, error) {
	for {
		stub, _, gen, err := c.current(ctx)
		if err != nil {
			return nil, err
		}
		reply, err := stub.Get(ctx, &pb.GetRequest{Pattern: pattern, Namespace: c.opts.namespace})
		if err == nil {
			return services(reply.GetServices()), nil
		}
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return nil, err
		}
		c.waitNew(ctx, gen)
	}
}

// Watch streams the matching services (EXISTING), SYNCED, then every
// change, across reconnects; the channel closes when ctx is done. A bad
// pattern is reported at once.
func (c *Client) Watch(ctx context.Context, pattern string) (<-chan Event, error) {
	stub, _, gen, err := c.current(ctx)
	if err != nil {
		return nil, err
	}
	stream, err := stub.Watch(ctx, &pb.WatchRequest{Pattern: pattern, Namespace: c.opts.namespace})
	if err != nil {
		return nil, err
	}
	first, err := stream.Recv()
	if err != nil {
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
		for {
			for {
				e, err := stream.Recv()
				if err != nil {
					break
				}
				if !deliver(e) {
					return
				}
			}
			if ctx.Err() != nil {
				return
			}
			c.waitNew(ctx, gen)
			if stub, _, gen, err = c.current(ctx); err != nil {
				return
			}
			if stream, err = stub.Watch(ctx, &pb.WatchRequest{Pattern: pattern, Namespace: c.opts.namespace, SinceRevision: since}); err != nil {
				return
			}
		}
	}()
	return events, nil
}

// Close ends the session, freeing its registrations.
func (c *Client) Close() {
	c.once.Do(func() { close(c.closing) })
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
	}
}
