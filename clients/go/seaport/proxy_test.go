package seaport_test

import (
	"io"
	"net"
	"sync"
	"testing"
)

// proxy forwards connections on 127.0.0.1 to target. cut drops every
// connection open now and keeps accepting new ones; close stops both.
type proxy struct {
	addr, target string
	listener     net.Listener

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
		go pump(down, up)
		go pump(up, down)
	}
}

func pump(dst, src net.Conn) {
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
}

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
