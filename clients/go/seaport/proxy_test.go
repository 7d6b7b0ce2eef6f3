package seaport_test

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// proxy forwards connections on 127.0.0.1 to target. cut drops every
// connection open now and keeps accepting new ones; silence stops
// forwarding bytes, both ways, without closing anything; close stops
// accepting and drops every connection.
type proxy struct {
	addr, target string
	listener     net.Listener
	silent       atomic.Bool

	mu       sync.Mutex
	open     []net.Conn
	accepted int
}

func startProxy(t *testing.T, target string) *proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{addr: l.Addr().String(), target: target, listener: l}
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) serve() {
	for {
		down, err := p.listener.Accept()
		if err != nil {
			return // closed
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			down.Close()
			continue
		}
		p.mu.Lock()
		p.open = append(p.open, down, up)
		p.accepted++
		p.mu.Unlock()
		go p.pump(down, up)
		go p.pump(up, down)
	}
}

// pump copies src to dst, dropping what it reads while the proxy is silent.
func (p *proxy) pump(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.silent.Load() {
			if _, err := dst.Write(buf[:n]); err != nil {
				break
			}
		}
		if err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}

// silence stops forwarding, on the connections open now and on new ones,
// as a path that goes dead without a reset does.
func (p *proxy) silence() { p.silent.Store(true) }

// connections is how many connections the proxy has accepted.
func (p *proxy) connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// cut drops every connection open now, both ways.
func (p *proxy) cut() {
	p.mu.Lock()
	open := p.open
	p.open = nil
	p.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
}

func (p *proxy) close() {
	p.listener.Close()
	p.cut()
}
