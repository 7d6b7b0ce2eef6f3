// Package seaport is a small Go client for the Seaport service registry.
//
// Query, Get, Watch and Catalog open no session: a reader holds nothing on
// the server, and under mTLS a reader without a client certificate (which
// the server refuses a session) can still read. The first Register (or
// Bind) opens a session, held by a goroutine on the Heartbeat stream; the
// last Free, or Close, ends it. When the stream drops, or its path goes
// silent (no pong for half the ttl), the goroutine reconnects, to the next
// address when several were given, with exponential backoff and full
// jitter, and resumes the session, so nothing is freed and watchers see
// nothing; a server that says it is stopping is left at once for the next
// address. Only when the server no longer knows the session (a restart, or
// its ttl passed) does it open a new one and re-register exactly this
// client's own registrations with their ids, hosts, ports and drains. An
// admin's free (Evicted) is final: the registration is forgotten, never
// registered again.
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
)

type options struct {
	namespace string
	ttl       time.Duration
	creds     credentials.TransportCredentials
	events    chan<- ClientEvent
	drainWait time.Duration
}

// Option configures Dial.
type Option func(*options) error

// WithNamespace sets the namespace for registrations and queries.
func WithNamespace(ns string) Option { return func(o *options) error { o.namespace = ns; return nil } }

// WithTTL sets the session ttl to ask for; without it the server's --default-ttl applies.
func WithTTL(ttl time.Duration) Option { return func(o *options) error { o.ttl = ttl; return nil } }

// WithDrainWait makes Close graceful: it drains every registration of the
// client, waits d for their users to move away, then closes (which frees
// them). Without it (or with 0) Close frees at once.
func WithDrainWait(d time.Duration) Option {
	return func(o *options) error {
		if d < 0 {
			return fmt.Errorf("seaport: drain wait %v is negative; give 0 (off) or more", d)
		}
		o.drainWait = d
		return nil
	}
}

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
	gen        int  // grows each time the connection is replaced
	connClosed bool // set by Close

	mu      sync.Mutex    // guards the session, owned and changed
	changed chan struct{} // closed and replaced whenever a session comes up or ends
	sess    *session      // nil while the client holds no registration
	owned   map[string]*owned
	keepers sync.WaitGroup // the sessions' goroutines

	closing chan struct{}
	once    sync.Once
}

var errClosed = status.Error(codes.Canceled, "seaport: the client is closed")

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
		changed: make(chan struct{}), owned: map[string]*owned{}, closing: make(chan struct{})}
	for _, o := range opts {
		if err := o(&c.opts); err != nil {
			return nil, err
		}
	}
	addr, err := c.waitReady(ctx)
	if err != nil {
		c.Close()
		return nil, err
	}
	c.emit(ClientEvent{Kind: Connected, Server: addr})
	return c, nil
}

func (c *Client) unreachable(err error) error {
	return status.Errorf(codes.Unavailable, "no Seaport server reachable at %s: %v", strings.Join(c.addrs, ", "), err)
}

// link is the shared connection as one call uses it: gen, to report its
// failure with, and the server's address.
type link struct {
	stub pb.RegistryClient
	conn *grpc.ClientConn
	gen  int
	addr string
}

// connection returns the shared connection, making it if there is none.
func (c *Client) connection() (link, error) {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	if c.connClosed {
		return link{}, errClosed
	}
	addr := c.addrs[c.next]
	if c.conn == nil {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(c.opts.creds), grpc.WithConnectParams(connectParams))
		if err != nil {
			return link{gen: c.gen, addr: addr}, fmt.Errorf("seaport: %s: %w", addr, err)
		}
		c.conn, c.stub = conn, pb.NewRegistryClient(conn)
	}
	return link{c.stub, c.conn, c.gen, addr}, nil
}

// failed moves on to the next address after the connection of generation
// gen failed, unless someone already has. With one address the connection
// is kept, for gRPC to reconnect it, unless replace: a path gone silent
// gives gRPC nothing to notice, so it is closed and made anew.
func (c *Client) failed(gen int, replace bool) {
	c.connMu.Lock()
	defer c.connMu.Unlock()
	if gen != c.gen || (len(c.addrs) == 1 && !replace) || c.connClosed {
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
		c.failed(gen, false)
	}
}

// waitReady connects to the first address that answers before ctx is
// done, and returns it.
func (c *Client) waitReady(ctx context.Context) (string, error) {
	for failures := 1; ; failures++ {
		l, err := c.connection()
		if err != nil {
			return "", err
		}
		if ready(ctx, l.conn, len(c.addrs) > 1) {
			return l.addr, nil
		}
		if ctx.Err() != nil {
			return "", c.unreachable(ctx.Err())
		}
		c.failed(l.gen, false)
		select {
		case <-time.After(jitter(failures, maxBackoff)):
		case <-ctx.Done():
			return "", c.unreachable(ctx.Err())
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

// Close ends the session, if any, freeing its registrations, and closes the
// connection. With WithDrainWait it first drains the registrations and
// waits that long.
func (c *Client) Close() {
	c.once.Do(func() {
		c.drainAll()
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

// drainAll drains every registration of the client's and waits the drain
// wait, when one is set, so that their users move away before Close frees
// them. A registration that cannot be drained is freed all the same.
func (c *Client) drainAll() {
	c.mu.Lock()
	ids := c.ownedIDsLocked()
	c.mu.Unlock()
	if c.opts.drainWait == 0 || len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), openTimeout)
	for _, id := range ids {
		_, _ = c.Drain(ctx, id)
	}
	cancel()
	time.Sleep(c.opts.drainWait)
}
