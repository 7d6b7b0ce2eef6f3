package seaport

import "fmt"

// ClientEventKind says what happened to the client's connection, session
// or registrations.
type ClientEventKind int

const (
	// Connected: a server accepted the client: at Dial (ObservedHost
	// empty), and whenever a new session is opened there (ObservedHost is
	// the client's address as the server sees it).
	Connected ClientEventKind = iota + 1
	// Disconnected: the session's stream to Server broke (Err says why);
	// the client is reconnecting.
	Disconnected
	// Resumed: the session was resumed on Server after its stream broke;
	// the registrations kept their ids and ports and watchers saw nothing.
	Resumed
	// Reasserted: Count registrations were registered again under a new
	// session, after the server lost the old one.
	Reasserted
	// ReassertFailed: registration ID could not be registered again (Err).
	ReassertFailed
	// Freed: registration ID of this client's is gone, for Reason.
	Freed
	// Evicted: an admin (By) freed registration ID; final, it is never
	// registered again. Freed with ReasonAdmin follows.
	Evicted
)

func (k ClientEventKind) String() string {
	switch k {
	case Connected:
		return "connected"
	case Disconnected:
		return "disconnected"
	case Resumed:
		return "resumed"
	case Reasserted:
		return "reasserted"
	case ReassertFailed:
		return "reassert-failed"
	case Freed:
		return "freed"
	case Evicted:
		return "evicted"
	}
	return fmt.Sprintf("ClientEventKind(%d)", int(k))
}

// ClientEvent is one thing that happened to the client; see WithEvents.
type ClientEvent struct {
	Kind         ClientEventKind
	Server       string     // Connected, Disconnected, Resumed
	ObservedHost string     // Connected with a new session
	ID           string     // Freed, Evicted, ReassertFailed
	Reason       FreeReason // Freed
	By           string     // Evicted
	Count        int        // Reasserted
	Err          error      // Disconnected, ReassertFailed
}

// WithEvents has the client send what happens to its connection, session
// and registrations to events, from Dial on. A send never waits: when
// events is full the event is dropped, so give it room and drain it.
func WithEvents(events chan<- ClientEvent) Option {
	return func(o *options) error { o.events = events; return nil }
}

func (c *Client) emit(e ClientEvent) {
	if c.opts.events == nil {
		return
	}
	select {
	case c.opts.events <- e:
	default:
	}
}

// freed tells of each of ids freed for reason.
func (c *Client) freed(ids []string, reason FreeReason) {
	for _, id := range ids {
		c.emit(ClientEvent{Kind: Freed, ID: id, Reason: reason})
	}
}
