package seaport

import (
	"fmt"
	"strings"

	pb "github.com/seaport-dev/seaport/clients/go/seaportv1"
)

// Service is one registration.
type Service struct {
	ID, Name, Version, Host string
	Port                    uint32
	Metadata                map[string]string
	Namespace, Owner        string
	// Draining: the instance is stopping and should get no new traffic.
	Draining bool
}

// Address is host:port.
func (s Service) Address() string {
	if strings.Contains(s.Host, ":") {
		return fmt.Sprintf("[%s]:%d", s.Host, s.Port)
	}
	return fmt.Sprintf("%s:%d", s.Host, s.Port)
}

func serviceOf(s *pb.Service) Service {
	return Service{
		ID: s.GetId(), Name: s.GetName(), Version: s.GetVersion(), Host: s.GetHost(), Port: s.GetPort(),
		Metadata: s.GetMetadata(), Namespace: s.GetNamespace(), Owner: s.GetOwner(), Draining: s.GetDraining(),
	}
}

func services(list []*pb.Service) []Service {
	out := make([]Service, len(list))
	for i, s := range list {
		out[i] = serviceOf(s)
	}
	return out
}

// Registration is a registration of this client's.
type Registration struct {
	ID      string
	Host    string
	Port    uint32
	Service Service
}

// FreeReason says why a registration was freed.
type FreeReason int

const (
	// ReasonUnknown: not a free, or a service that left a watched set by an update.
	ReasonUnknown FreeReason = iota
	// ReasonOwner: its owner freed it.
	ReasonOwner
	// ReasonClosed: its session was closed by its client.
	ReasonClosed
	// ReasonExpired: its session's ttl passed with no heartbeat (or, told
	// by this client of its own, the server no longer knew the session).
	ReasonExpired
	// ReasonAdmin: an admin freed it; final, its owner does not register it again.
	ReasonAdmin
)

func (r FreeReason) String() string {
	switch r {
	case ReasonOwner:
		return "owner"
	case ReasonClosed:
		return "closed"
	case ReasonExpired:
		return "expired"
	case ReasonAdmin:
		return "admin"
	}
	return "unknown"
}

// Event is one watch event; Kind is EXISTING, SYNCED, REGISTERED, UPDATED, FREED or RESET.
type Event struct {
	Kind     string
	Service  *Service
	Revision uint64
	// Reason is why, for FREED.
	Reason FreeReason
}

func eventOf(e *pb.WatchEvent) Event {
	ev := Event{Kind: e.GetKind().String(), Revision: e.GetRevision(), Reason: FreeReason(e.GetReason())}
	if e.GetService() != nil {
		s := serviceOf(e.GetService())
		ev.Service = &s
	}
	return ev
}
