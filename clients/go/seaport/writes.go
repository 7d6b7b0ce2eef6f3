package seaport

import (
	"context"
	"fmt"
	"net"
	"strconv"

	pb "github.com/seaport-dev/seaport/clients/go/seaportv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// registration is what Register and Bind are asked for.
type registration struct {
	req        *pb.RegisterRequest
	listenHost string // Bind's local address; "" is every address
}

// RegisterOption sets a field of a registration.
type RegisterOption func(*registration)

// Port asks for an explicit port (default: one the registry assigns).
func Port(p uint32) RegisterOption { return func(r *registration) { r.req.Port = p } }

// Host sets the host (default: the address the server sees).
func Host(h string) RegisterOption { return func(r *registration) { r.req.Host = h } }

// ID sets the registration id (default: generated).
func ID(id string) RegisterOption { return func(r *registration) { r.req.Id = id } }

// Metadata sets the metadata.
func Metadata(m map[string]string) RegisterOption {
	return func(r *registration) { r.req.Metadata = m }
}

// ListenHost is the local address Bind listens on (default: every address).
func ListenHost(h string) RegisterOption { return func(r *registration) { r.listenHost = h } }

// Register registers role ("name@1.2.3") under this client's session,
// opening the session if none is open.
func (c *Client) Register(ctx context.Context, role string, opts ...RegisterOption) (*Registration, error) {
	r := registration{req: &pb.RegisterRequest{Role: role, Namespace: c.opts.namespace}}
	for _, o := range opts {
		o(&r)
	}
	return c.register(ctx, r.req)
}

func (c *Client) register(ctx context.Context, req *pb.RegisterRequest) (*Registration, error) {
	var registered Service
	err := c.write(ctx, func(stub pb.RegistryClient, session string) error {
		req.SessionId = session
		reply, err := stub.Register(ctx, req)
		if err != nil {
			return err
		}
		registered = serviceOf(reply.GetService())
		remembered := proto.Clone(req).(*pb.RegisterRequest)
		remembered.Id, remembered.Host, remembered.Port = registered.ID, registered.Host, registered.Port
		c.mu.Lock() // before the session is released, which would end it holding nothing
		c.owned[registered.ID] = &owned{req: remembered}
		c.mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &Registration{ID: registered.ID, Host: registered.Host, Port: registered.Port, Service: registered}, nil
}

// bindAttempts is how many assigned ports Bind tries.
const bindAttempts = 5

// Bind registers role and returns a listener on its port, so that no other
// process takes the port between the two. A port the registry assigned
// but another process holds locally is freed and another one asked for,
// a few times; an explicit Port is tried once.
func (c *Client) Bind(ctx context.Context, role string, opts ...RegisterOption) (net.Listener, *Registration, error) {
	r := registration{req: &pb.RegisterRequest{Role: role, Namespace: c.opts.namespace}}
	for _, o := range opts {
		o(&r)
	}
	// Holding the session over the attempts keeps a freed port's session open for the next.
	s, err := c.acquire()
	if err != nil {
		return nil, nil, err
	}
	defer c.release(s)
	attempts := bindAttempts
	if r.req.GetPort() != 0 {
		attempts = 1
	}
	var last error
	for range attempts {
		reg, err := c.register(ctx, proto.Clone(r.req).(*pb.RegisterRequest))
		if err != nil {
			return nil, nil, err
		}
		l, err := net.Listen("tcp", net.JoinHostPort(r.listenHost, strconv.Itoa(int(reg.Port))))
		if err == nil {
			return l, reg, nil
		}
		last = err
		if err := c.Free(ctx, reg.ID); err != nil {
			return nil, nil, fmt.Errorf("seaport: freeing port %d, which is taken locally (%v): %w", reg.Port, last, err)
		}
	}
	return nil, nil, fmt.Errorf("seaport: could not listen on any of %d registered ports: %w", attempts, last)
}

// Update replaces (or, with merge, merges into) a registration's metadata.
func (c *Client) Update(ctx context.Context, id string, metadata map[string]string, merge bool) (Service, error) {
	return c.update(ctx, &pb.UpdateRequest{Id: id, Metadata: metadata, Merge: merge})
}

// MergeMetadata merges metadata into a registration's and removes the
// keys in remove.
func (c *Client) MergeMetadata(ctx context.Context, id string, metadata map[string]string, remove ...string) (Service, error) {
	return c.update(ctx, &pb.UpdateRequest{Id: id, Metadata: metadata, Merge: true, RemoveKeys: remove})
}

func (c *Client) update(ctx context.Context, req *pb.UpdateRequest) (Service, error) {
	var reply *pb.UpdateResponse
	err := c.write(ctx, func(stub pb.RegistryClient, session string) error {
		req.SessionId = session
		var err error
		reply, err = stub.Update(ctx, req)
		return err
	})
	if err != nil {
		return Service{}, err
	}
	updated := serviceOf(reply.GetService())
	c.mu.Lock()
	if o, ok := c.owned[req.GetId()]; ok {
		o.req.Metadata = updated.Metadata // re-asserted as it is now
	}
	c.mu.Unlock()
	return updated, nil
}

// Drain marks a registration draining: the instance is stopping and
// should get no new traffic. Get and catalog picks skip it, watchers see
// it UPDATED with Draining set, and it stays draining until freed (an
// Update keeps it so; draining again changes nothing). Like Free: this
// client's own, or, under mTLS, its identity's (or any, for an admin). The
// client drains its own again whenever it re-asserts them.
func (c *Client) Drain(ctx context.Context, id string) (Service, error) {
	var drained Service
	err := c.write(ctx, func(stub pb.RegistryClient, session string) error {
		reply, err := stub.Drain(ctx, &pb.DrainRequest{SessionId: session, Id: id})
		if err != nil {
			return err
		}
		drained = serviceOf(reply.GetService())
		c.mu.Lock()
		if o, ok := c.owned[id]; ok {
			o.drained = true
		}
		c.mu.Unlock()
		return nil
	})
	return drained, err
}

// Free frees a registration: this client's own, or, under mTLS, one its
// certificate's identity owns (or any, for an admin). Freeing this
// client's last one ends its session.
func (c *Client) Free(ctx context.Context, id string) error {
	mine := false
	err := c.write(ctx, func(stub pb.RegistryClient, session string) error {
		_, err := stub.Free(ctx, &pb.FreeRequest{SessionId: session, Id: id})
		if err == nil || status.Code(err) == codes.NotFound {
			c.mu.Lock() // before the session is released, so that it ends if this was the last
			_, mine = c.owned[id]
			delete(c.owned, id)
			c.mu.Unlock()
		}
		return err
	})
	if mine && err == nil {
		c.freed([]string{id}, ReasonOwner)
	}
	return err
}
