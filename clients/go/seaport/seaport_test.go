package seaport_test

// The shared client scenario (docs/client-scenario.md) against a real seaportd.

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/seaport-dev/seaport/clients/go/seaport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func binary(name, env string) string {
	if p := os.Getenv(env); p != "" {
		return p
	}
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "target", "debug", name)
}

// server is a seaportd child process, logging its sessions (opened,
// resumed, closed) to a file.
type server struct {
	t       *testing.T
	addr    string
	flags   []string
	cmd     *exec.Cmd
	exited  chan struct{} // closed when cmd has exited
	logFile *os.File
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startServer(t *testing.T, flags ...string) *server {
	logFile, err := os.Create(filepath.Join(t.TempDir(), "seaportd.log"))
	if err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, addr: "127.0.0.1:" + strconv.Itoa(freePort(t)), flags: flags, logFile: logFile}
	s.start()
	t.Cleanup(func() {
		select {
		case <-s.exited:
		default:
			s.stop()
		}
		if t.Failed() {
			t.Logf("seaportd's log:\n%s", s.log())
		}
		logFile.Close()
	})
	return s
}

func (s *server) start() {
	args := append([]string{"--listen", s.addr, "--drain-delay", "0s", "--log", "warn,seaport_server::grpc::heartbeat=info"}, s.flags...)
	s.cmd = exec.Command(binary("seaportd", "SEAPORTD"), args...)
	s.cmd.Stderr = s.logFile // a file, not a pipe: a line is there as soon as seaportd has written it
	s.cmd.Env = append(os.Environ(), "NO_COLOR=1")
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		_ = cmd.Wait()
		close(exited)
	}(s.cmd, s.exited)
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", s.addr); err == nil {
			c.Close()
			return
		}
	}
	s.t.Fatalf("seaportd did not listen on %s", s.addr)
}

func (s *server) stop() {
	s.terminate()
	<-s.exited
}

// terminate asks seaportd to stop (SIGTERM), as Kubernetes does.
func (s *server) terminate() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
}

// log is everything seaportd has logged so far.
func (s *server) log() string {
	b, err := os.ReadFile(s.logFile.Name())
	if err != nil {
		s.t.Fatal(err)
	}
	return string(b)
}

// waitFor polls cond until it holds, and fails the test saying what never happened.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within 10s", what)
		}
	}
}

func dial(t *testing.T, addr string, opts ...seaport.Option) *seaport.Client {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := seaport.Dial(ctx, []string{addr}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// dialAll dials the addresses in order, as one client.
func dialAll(t *testing.T, addrs []string, opts ...seaport.Option) *seaport.Client {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := seaport.Dial(ctx, addrs, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// await reads events until one of kind comes, and fails the test if none
// does within 10s.
func await(t *testing.T, events <-chan seaport.ClientEvent, kind seaport.ClientEventKind) seaport.ClientEvent {
	t.Helper()
	timeout := time.After(10 * time.Second)
	var seen []string
	for {
		select {
		case e := <-events:
			if e.Kind == kind {
				return e
			}
			seen = append(seen, e.Kind.String())
		case <-timeout:
			t.Fatalf("no %s event within 10s (saw %v)", kind, seen)
		}
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestRegisterGetQuery(t *testing.T) {
	s := startServer(t)
	owner, other := dial(t, s.addr), dial(t, s.addr)
	reg, err := owner.Register(ctx(t), "web@1.2.3", seaport.Metadata(map[string]string{"zone": "a"}))
	if err != nil {
		t.Fatal(err)
	}
	if reg.Port < 10000 || reg.Port > 65535 {
		t.Fatalf("port %d out of range", reg.Port)
	}
	found, err := other.Get(ctx(t), "web@1.2.x")
	if err != nil || len(found) != 1 || found[0].ID != reg.ID || found[0].Metadata["zone"] != "a" {
		t.Fatalf("get: %v %v", found, err)
	}
	none, err := other.Query(ctx(t), "web@2.x")
	if err != nil || len(none) != 0 {
		t.Fatalf("query web@2.x: %v %v", none, err)
	}
}

func next(t *testing.T, events <-chan seaport.Event) seaport.Event {
	select {
	case e, ok := <-events:
		if !ok {
			t.Fatal("watch ended")
		}
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no event in time")
	}
	return seaport.Event{}
}

func TestWatchSnapshotUpdateFree(t *testing.T) {
	s := startServer(t)
	c := dial(t, s.addr)
	reg, err := c.Register(ctx(t), "web@1.2.3", seaport.Metadata(map[string]string{"zone": "a"}))
	if err != nil {
		t.Fatal(err)
	}
	events, err := c.Watch(ctx(t), "web")
	if err != nil {
		t.Fatal(err)
	}
	if e := next(t, events); e.Kind != "EXISTING" || e.Service.ID != reg.ID {
		t.Fatalf("want EXISTING, got %+v", e)
	}
	if e := next(t, events); e.Kind != "SYNCED" {
		t.Fatalf("want SYNCED, got %+v", e)
	}
	if _, err := c.Update(ctx(t), reg.ID, map[string]string{"zone": "b"}, false); err != nil {
		t.Fatal(err)
	}
	if e := next(t, events); e.Kind != "UPDATED" || e.Service.Metadata["zone"] != "b" {
		t.Fatalf("want UPDATED zone=b, got %+v", e)
	}
	if err := c.Free(ctx(t), reg.ID); err != nil {
		t.Fatal(err)
	}
	if e := next(t, events); e.Kind != "FREED" || e.Service.ID != reg.ID {
		t.Fatalf("want FREED, got %+v", e)
	}
}

func TestGetStartedBeforeTheRegistration(t *testing.T) {
	s := startServer(t)
	waiter, owner := dial(t, s.addr), dial(t, s.addr)
	got := make(chan []seaport.Service, 1)
	go func() {
		found, _ := waiter.Get(ctx(t), "web@1.2.x")
		got <- found
	}()
	time.Sleep(300 * time.Millisecond)
	reg, err := owner.Register(ctx(t), "web@1.2.9")
	if err != nil {
		t.Fatal(err)
	}
	select {
	case found := <-got:
		if len(found) != 1 || found[0].ID != reg.ID {
			t.Fatalf("get returned %v", found)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("get never returned")
	}
	short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := waiter.Get(short, "nobody"); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("want DEADLINE_EXCEEDED, got %v", err)
	}
}

func TestRestartBringsTheRegistrationBack(t *testing.T) {
	s := startServer(t)
	events := make(chan seaport.ClientEvent, 256)
	c := dial(t, s.addr, seaport.WithTTL(5*time.Second), seaport.WithEvents(events))
	reg, err := c.Register(ctx(t), "web@1.2.3")
	if err != nil {
		t.Fatal(err)
	}
	// Told the server is stopping, a client with one address lets its stream go, and seaportd exits.
	stopping := time.Now()
	s.stop()
	if took := time.Since(stopping); took > 5*time.Second {
		t.Fatalf("seaportd took %v to stop, waiting for the client's session stream", took)
	}
	if e := await(t, events, seaport.Disconnected); !strings.Contains(e.Err.Error(), "stopping") {
		t.Fatalf("want Disconnected, the server stopping, got %+v", e)
	}
	s.start()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		back, err := c.Query(ctx(t), "web")
		if err == nil && len(back) == 1 {
			if back[0].ID != reg.ID || back[0].Port != reg.Port {
				t.Fatalf("came back as %+v, want id %s port %d", back[0], reg.ID, reg.Port)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the registration never came back: %v %v", back, err)
		}
	}
}

func TestBadRangeIsInvalidArgument(t *testing.T) {
	s := startServer(t)
	c := dial(t, s.addr)
	_, err := c.Query(ctx(t), "web@1.2.3.4")
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), `"1.2.3.4" has more than three version parts`) {
		t.Fatalf("want INVALID_ARGUMENT with the server's message, got %v", err)
	}
}

// certificates makes a development CA, a server certificate and client
// certificates for clients; it returns the directory and a reader of its files.
func certificates(t *testing.T, clients ...string) (string, func(string) []byte) {
	dir := filepath.Join(t.TempDir(), "pki")
	args := []string{"certs", "init", dir}
	for _, c := range clients {
		args = append(args, "--client", c)
	}
	if out, err := exec.Command(binary("seaportctl", "SEAPORTCTL"), args...).CombinedOutput(); err != nil {
		t.Fatalf("certs init: %v %s", err, out)
	}
	return dir, func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
}

func tlsFlags(dir string) []string {
	return []string{"--tls-cert", filepath.Join(dir, "server.pem"), "--tls-key", filepath.Join(dir, "server-key.pem"), "--client-ca", filepath.Join(dir, "ca.pem")}
}

func TestMTLSCertificateRegistersAndNoCertificateOnlyReads(t *testing.T) {
	dir, read := certificates(t, "gopher")
	s := startServer(t, tlsFlags(dir)...)
	c := dial(t, s.addr, seaport.WithTLS(read("ca.pem"), read("client-gopher.pem"), read("client-gopher-key.pem")))
	reg, err := c.Register(ctx(t), "web@1.2.3")
	if err != nil || reg.Service.Owner != "gopher" {
		t.Fatalf("register over mTLS: %+v %v", reg, err)
	}
	// A reader needs no certificate: it opens no session, which the server would refuse it.
	reader := dial(t, s.addr, seaport.WithTLS(read("ca.pem"), nil, nil))
	if found, err := reader.Query(ctx(t), "web"); err != nil || len(found) != 1 || found[0].ID != reg.ID {
		t.Fatalf("query without a certificate: %v %v", found, err)
	}
	if found, err := reader.Get(ctx(t), "web"); err != nil || len(found) != 1 || found[0].ID != reg.ID {
		t.Fatalf("get without a certificate: %v %v", found, err)
	}
	events, err := reader.Watch(ctx(t), "web")
	if err != nil {
		t.Fatal(err)
	}
	if e := next(t, events); e.Kind != "EXISTING" || e.Service.ID != reg.ID {
		t.Fatalf("want EXISTING, got %+v", e)
	}
	short, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := reader.Register(short, "web@1.2.4"); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("want UNAUTHENTICATED registering without a certificate, got %v", err)
	}
}
