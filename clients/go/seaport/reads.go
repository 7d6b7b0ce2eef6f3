package seaport

import (
	"context"
	"time"

	pb "github.com/seaport-dev/seaport/clients/go/seaportv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Query returns the services matching pattern ("name", "name@range" or "")
// now. It opens no session; when the server is unavailable it asks the
// next address, each once.
func (c *Client) Query(ctx context.Context, pattern string) ([]Service, error) {
	for tried := 1; ; tried++ {
		l, err := c.connection()
		if err != nil {
			return nil, err
		}
		reply, err := l.stub.Query(ctx, &pb.QueryRequest{Pattern: pattern, Namespace: c.opts.namespace})
		if err == nil {
			return services(reply.GetServices()), nil
		}
		c.failedOn(err, l.gen)
		if !c.movedOn(err, l.gen) || tried > len(c.addrs) || ctx.Err() != nil {
			return nil, err
		}
	}
}

// movedOn says whether a call on the connection of generation gen failed
// because that server is unavailable, or because the client closed the
// connection to move on to another: worth asking again.
func (c *Client) movedOn(err error, gen int) bool {
	switch status.Code(err) {
	case codes.Unavailable:
		return true
	case codes.Canceled:
		c.connMu.Lock()
		defer c.connMu.Unlock()
		return c.gen != gen && !c.connClosed
	}
	return false
}

// Get waits, across reconnects, until something that is not draining
// matches pattern, and returns those matches; or until ctx's deadline,
// which the server is told as the Get's timeout (DEADLINE_EXCEEDED, with
// the server's message). It opens no session.
func (c *Client) Get(ctx context.Context, pattern string) ([]Service, error) {
	deadline, _ := ctx.Deadline()
	return c.get(ctx, pattern, deadline)
}

// GetTimeout is Get that waits at most timeout: the server ends the wait
// (DEADLINE_EXCEEDED, with its message), and ctx can end it sooner.
func (c *Client) GetTimeout(ctx context.Context, pattern string, timeout time.Duration) ([]Service, error) {
	deadline := time.Now().Add(timeout)
	// A little longer than the server's wait, so that its answer comes
	// first, and a server that never answers still ends the call.
	ctx, cancel := context.WithDeadline(ctx, deadline.Add(time.Second))
	defer cancel()
	return c.get(ctx, pattern, deadline)
}

// get is Get until deadline (none when zero), told to the server in each
// attempt as the time left.
func (c *Client) get(ctx context.Context, pattern string, deadline time.Time) ([]Service, error) {
	for failures := 1; ; failures++ {
		l, err := c.connection()
		if err != nil {
			return nil, err
		}
		req := &pb.GetRequest{Pattern: pattern, Namespace: c.opts.namespace}
		if !deadline.IsZero() {
			left := time.Until(deadline)
			if left <= 0 {
				return nil, status.Errorf(codes.DeadlineExceeded, "no service matched %q in time", pattern)
			}
			req.TimeoutMs = uint64((left + time.Millisecond - 1) / time.Millisecond)
		}
		reply, err := l.stub.Get(ctx, req)
		if err == nil {
			return services(reply.GetServices()), nil
		}
		c.failedOn(err, l.gen)
		if !c.movedOn(err, l.gen) || ctx.Err() != nil {
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
