package seaport

import (
	"context"
	"errors"
	"io"
	"time"

	pb "github.com/seaport-dev/seaport/clients/go/seaportv1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// WatchOption configures Watch.
type WatchOption func(*pb.WatchRequest)

// SinceRevision resumes a watch after revision (an Event's Revision): the
// changes since are replayed with no snapshot, or, when the server no
// longer has them, RESET and a snapshot come first.
func SinceRevision(revision uint64) WatchOption {
	return func(r *pb.WatchRequest) { r.SinceRevision = revision }
}

// Watch streams the matching services (EXISTING), SYNCED, then every
// change, across reconnects: each reconnect resumes after the last
// revision seen (the changes missed, then SYNCED again), and one to
// another server (whose revisions are its own) delivers RESET and a fresh
// snapshot. The channel closes when ctx is done, the client closes, or the
// server refuses the watch for good. A refusal (a bad pattern) is reported
// at once; an unavailable server is waited for until ctx is done. It opens
// no session.
func (c *Client) Watch(ctx context.Context, pattern string, opts ...WatchOption) (<-chan Event, error) {
	req := &pb.WatchRequest{Pattern: pattern, Namespace: c.opts.namespace}
	for _, o := range opts {
		o(req)
	}
	l, stream, first, err := c.startWatch(ctx, req)
	if err != nil {
		return nil, err
	}
	events := make(chan Event, 64)
	w := &watch{c: c, ctx: ctx, req: req, events: events}
	go w.follow(l, stream, first)
	return events, nil
}

// startWatch opens the watch, waiting while the server is unavailable, and
// returns the first event if it had to read one to see the server accept.
func (c *Client) startWatch(ctx context.Context, req *pb.WatchRequest) (link, pb.Registry_WatchClient, *pb.WatchEvent, error) {
	for failures := 1; ; failures++ {
		l, err := c.connection()
		if err != nil {
			return link{}, nil, nil, err
		}
		stream, err := l.stub.Watch(ctx, req)
		var first *pb.WatchEvent
		// The server answers headers once it accepts the watch, and a
		// refusal (a bad pattern) with none; with a revision to resume
		// from, no event may come for a while.
		if err == nil {
			if md, _ := stream.Header(); md == nil {
				first, err = stream.Recv()
			}
		}
		if errors.Is(err, io.EOF) {
			err = status.Error(codes.Unavailable, "seaport: the server ended the watch at once")
		}
		if err == nil {
			return l, stream, first, nil
		}
		c.failedOn(err, l.gen)
		if !c.movedOn(err, l.gen) || ctx.Err() != nil {
			return link{}, nil, nil, err
		}
		select {
		case <-time.After(jitter(failures, maxBackoff)):
		case <-ctx.Done():
			return link{}, nil, nil, status.FromContextError(ctx.Err()).Err()
		case <-c.closing:
			return link{}, nil, nil, errClosed
		}
	}
}

// watch is one Watch's goroutine's state.
type watch struct {
	c      *Client
	ctx    context.Context
	req    *pb.WatchRequest
	events chan<- Event
}

// deliver hands e to the caller, noting its revision to resume after.
func (w *watch) deliver(e Event) bool {
	if e.Kind != "EXISTING" && e.Kind != "RESET" {
		w.req.SinceRevision = e.Revision
	}
	select {
	case w.events <- e:
		return true
	case <-w.ctx.Done():
		return false
	}
}

// follow delivers the events of stream, opened over l, and of the streams
// that replace it when it breaks.
func (w *watch) follow(l link, stream pb.Registry_WatchClient, first *pb.WatchEvent) {
	defer close(w.events)
	if first != nil && !w.deliver(eventOf(first)) {
		return
	}
	for failures := 0; ; {
		for stream != nil {
			e, err := stream.Recv()
			if err != nil {
				switch status.Code(err) {
				case codes.InvalidArgument, codes.Unauthenticated, codes.PermissionDenied:
					return // asking again would get the same
				}
				w.c.failedOn(err, l.gen)
				break
			}
			failures = 0
			if !w.deliver(eventOf(e)) {
				return
			}
		}
		failures++
		select {
		case <-time.After(jitter(failures, maxBackoff)):
		case <-w.ctx.Done():
			return
		case <-w.c.closing:
			return
		}
		was := l.addr
		var err error
		if l, err = w.c.connection(); err != nil {
			return
		}
		if l.addr != was {
			w.req.SinceRevision = 0
			if !w.deliver(Event{Kind: "RESET"}) {
				return
			}
		}
		if stream, err = l.stub.Watch(w.ctx, w.req); err != nil {
			stream = nil
		}
	}
}
