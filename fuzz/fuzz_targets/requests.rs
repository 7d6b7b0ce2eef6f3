//! Arbitrary bytes as each request of the API, sent through seaportd's own
//! gRPC service (the adapter, its error mapping and its response encoding)
//! to a fresh registry core.
//!
//! The input is a sequence of frames, each a length byte and that many
//! bytes. Each frame is decoded as a HeartbeatRequest, RegisterRequest,
//! UpdateRequest, FreeRequest, QueryRequest, GetRequest and WatchRequest in
//! turn, and each that decodes is sent. The fuzzer cannot guess session
//! ids, so an empty `session_id` means the session opened last and a
//! single digit `n` the n-th one opened; a heartbeat `ping` first lets
//! `seq % 16` half-seconds pass (the clock is tokio's, paused), so sessions
//! expire and freed ports leave quarantine. Get does not wait: it is polled
//! once and dropped.
//!
//! Checked after each frame, besides "no panic": every answer decodes as
//! `seaport::pb` messages, no status is UNKNOWN or INTERNAL, no two live
//! registrations share a host and port, and each watcher's view (from its
//! events) equals a fresh query.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Body as _;
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use seaport::pb::{self, heartbeat_request::Kind as In, heartbeat_response::Kind as Out};
use seaport_server::auth::Auth;
use seaport_server::grpc::{RegistryServer, RegistryService};
use seaport_server::registry::{Limits, Registry, Selector, namespace_or_default};
use tonic::transport::server::TcpConnectInfo;
use tower::Service as _;

/// The address every request comes from.
const PEER: &str = "10.0.0.1:40000";
/// Frames read from one input.
const MAX_FRAMES: usize = 32;
/// Watchers kept open across frames.
const MAX_WATCHERS: usize = 4;

type Server = RegistryServer<RegistryService>;

/// A service as the tests compare them: everything a client can act on.
type Seen = (String, String, String, u32, BTreeMap<String, String>);

fn seen(s: &pb::Service) -> (String, Seen) {
    (
        s.id.clone(),
        (
            format!("{}@{}", s.name, s.version),
            s.namespace.clone(),
            s.host.clone(),
            s.port,
            s.metadata.clone().into_iter().collect(),
        ),
    )
}

fn seen_core(s: &seaport::Service) -> (String, Seen) {
    let version = s
        .version
        .as_ref()
        .map(|v| v.to_string())
        .unwrap_or_default();
    (
        s.id.clone(),
        (
            format!("{}@{version}", s.name),
            s.namespace.to_string(),
            s.host.to_string(),
            u32::from(s.port),
            s.metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
    )
}

/// With `SEAPORT_FUZZ_TRACE` set, each call is printed (to read a crash).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("SEAPORT_FUZZ_TRACE").is_some())
}

/// Polls once with a waker that does nothing: everything here is ready at
/// once or waits on something only a later request can bring.
fn poll_once<F: Future + ?Sized>(f: Pin<&mut F>) -> Poll<F::Output> {
    f.poll(&mut Context::from_waker(Waker::noop()))
}

/// A response body read so far: whole gRPC messages, and the status once
/// the stream has ended.
#[derive(Default)]
struct Read {
    buffer: BytesMut,
    messages: Vec<Bytes>,
    status: Option<i32>,
}

impl Read {
    fn take_messages(&mut self) {
        while self.buffer.len() >= 5 {
            assert_eq!(self.buffer[0], 0, "responses are not compressed");
            let len = u32::from_be_bytes(self.buffer[1..5].try_into().unwrap()) as usize;
            if self.buffer.len() < 5 + len {
                break;
            }
            self.buffer.advance(5);
            self.messages.push(self.buffer.split_to(len).freeze());
        }
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<i32> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    // UNKNOWN, INTERNAL and DATA_LOSS mean a handler or encoder failed.
    assert!(
        !matches!(code, 2 | 13 | 15),
        "status {code}: {:?}",
        headers.get("grpc-message")
    );
    Some(code)
}

/// Reads what the body has now, until it waits or ends.
fn drain(body: &mut Pin<Box<tonic::body::Body>>, read: &mut Read) {
    let mut cx = Context::from_waker(Waker::noop());
    while read.status.is_none() {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Pending => break,
            Poll::Ready(None) => {
                read.status = Some(0);
                break;
            }
            Poll::Ready(Some(Err(e))) => panic!("response body failed: {e}"),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    read.buffer.put(data);
                    read.take_messages();
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().expect("data or trailers");
                    read.status = Some(status_of(&trailers).expect("trailers carry a status"));
                }
            },
        }
    }
}

/// An open call: its body and what has been read of it.
struct Call {
    body: Pin<Box<tonic::body::Body>>,
    read: Read,
}

impl Call {
    fn drain(&mut self) {
        drain(&mut self.body, &mut self.read);
    }
}

struct Harness {
    server: Server,
    registry: Registry,
    /// Sessions opened, in order; the last is the one an empty id means.
    sessions: Vec<String>,
    /// Namespaces that have held a registration.
    namespaces: BTreeSet<String>,
    watchers: Vec<Watcher>,
}

struct Watcher {
    selector: Selector,
    call: Call,
    view: BTreeMap<String, Seen>,
}

impl Watcher {
    /// Reads the events the watch has now and applies them to the view.
    fn catch_up(&mut self) {
        self.call.drain();
        assert!(
            self.call.read.status.is_none(),
            "a watch ended: {:?}",
            self.call.read.status
        );
        for message in self.call.read.messages.drain(..) {
            let event = pb::WatchEvent::decode(message).expect("a watch event decodes");
            use pb::watch_event::Kind;
            let kind = Kind::try_from(event.kind).expect("a known event kind");
            match kind {
                Kind::Existing | Kind::Registered | Kind::Updated | Kind::Freed => {
                    let (id, s) = seen(event.service.as_ref().expect("the event names a service"));
                    if kind == Kind::Freed {
                        assert!(self.view.remove(&id).is_some(), "freed {id} never seen");
                    } else {
                        self.view.insert(id, s);
                    }
                }
                Kind::Reset => self.view.clear(),
                Kind::Synced => {}
                Kind::Unspecified => panic!("an unspecified event"),
            }
        }
    }
}

fn framed(messages: &[Vec<u8>]) -> Full<Bytes> {
    let mut body = BytesMut::new();
    for m in messages {
        body.put_u8(0);
        body.put_u32(m.len() as u32);
        body.put_slice(m);
    }
    Full::new(body.freeze())
}

impl Harness {
    /// Sends one call and reads what it answers at once. `None` when the
    /// call has not answered yet (a Get waiting): it is dropped.
    fn call(&mut self, method: &str, messages: &[Vec<u8>]) -> Option<Call> {
        let mut request = http::Request::builder()
            .method("POST")
            .uri(format!("http://seaport/seaport.v1.Registry/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(framed(messages))
            .expect("a request");
        request.extensions_mut().insert(TcpConnectInfo {
            local_addr: None,
            remote_addr: Some(PEER.parse::<SocketAddr>().unwrap()),
        });
        let mut future = self.server.call(request);
        let response = match poll_once(Pin::new(&mut future)) {
            Poll::Ready(response) => response.expect("infallible"),
            Poll::Pending => {
                assert_eq!(method, "Get", "only Get waits");
                return None;
            }
        };
        let (parts, body) = response.into_parts();
        let mut call = Call {
            body: Box::pin(body),
            read: Read::default(),
        };
        // A trailers-only answer (an error) has its status in the headers.
        if let Some(code) = status_of(&parts.headers) {
            if trace() {
                eprintln!(
                    "{method}: status {code} {:?}",
                    parts.headers.get("grpc-message")
                );
            }
            call.read.status = Some(code);
            return Some(call);
        }
        call.drain();
        if trace() {
            eprintln!(
                "{method}: status {:?}, {} messages",
                call.read.status,
                call.read.messages.len()
            );
        }
        Some(call)
    }

    /// A unary call's answer: its message, or the error code.
    fn unary<T: Message + Default>(&mut self, method: &str, request: Vec<u8>) -> Result<T, i32> {
        let call = self.call(method, &[request]).expect("unary calls answer");
        match call.read.status {
            Some(0) | None => {
                assert_eq!(call.read.messages.len(), 1, "{method} answers once");
                Ok(T::decode(call.read.messages[0].clone()).expect("the answer decodes"))
            }
            Some(code) => {
                assert!(
                    call.read.messages.is_empty(),
                    "{method}: a message and an error"
                );
                Err(code)
            }
        }
    }

    /// The session an id in a request means.
    fn session(&self, id: String) -> String {
        match id.as_bytes() {
            [] => self.sessions.last().cloned().unwrap_or_default(),
            [d] if d.is_ascii_digit() && !self.sessions.is_empty() => {
                self.sessions[usize::from(d - b'0') % self.sessions.len()].clone()
            }
            _ => id,
        }
    }

    fn heartbeat(&mut self, messages: Vec<pb::HeartbeatRequest>) {
        let encoded: Vec<Vec<u8>> = messages.iter().map(Message::encode_to_vec).collect();
        let call = self.call("Heartbeat", &encoded).expect("heartbeat answers");
        for message in &call.read.messages {
            let reply = pb::HeartbeatResponse::decode(message.clone()).expect("a reply decodes");
            if let Some(Out::Opened(opened)) = reply.kind {
                assert_eq!(opened.observed_host, "10.0.0.1");
                if !opened.resumed {
                    self.sessions.push(opened.session_id);
                }
            }
        }
    }

    async fn apply_heartbeat(&mut self, mut message: pb::HeartbeatRequest) {
        match &mut message.kind {
            Some(In::Open(_)) | None => self.heartbeat(vec![message]),
            Some(In::Resume(resume)) => {
                resume.session_id = self.session(std::mem::take(&mut resume.session_id));
                self.heartbeat(vec![message]);
            }
            Some(In::Ping(ping)) => {
                let pause = Duration::from_millis(500 * (ping.seq % 16));
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                let resume = self.resume_current();
                self.heartbeat(vec![resume, message]);
            }
            Some(In::Close(_)) => {
                let resume = self.resume_current();
                self.heartbeat(vec![resume, message]);
            }
        }
    }

    fn resume_current(&self) -> pb::HeartbeatRequest {
        pb::HeartbeatRequest {
            kind: Some(In::Resume(pb::ResumeSession {
                session_id: self.session(String::new()),
            })),
        }
    }

    fn register(&mut self, mut r: pb::RegisterRequest) {
        r.session_id = self.session(r.session_id);
        if let Ok(answer) = self.unary::<pb::RegisterResponse>("Register", r.encode_to_vec()) {
            let service = answer.service.expect("a registration answers its service");
            assert!(service.port != 0, "a port was assigned");
            assert!(r.port == 0 || r.port == service.port, "the port asked for");
            self.namespaces.insert(service.namespace);
        }
    }

    fn watch(&mut self, r: pb::WatchRequest) {
        let selector = selector(&r.pattern, &r.namespace, r.metadata.clone());
        let since = r.since_revision;
        let call = self
            .call("Watch", &[r.encode_to_vec()])
            .expect("a watch answers");
        if call.read.status.is_some() {
            assert!(selector.is_none(), "a watch of a valid selector refused");
            return;
        }
        // A watch that replays from a revision starts from a state this
        // harness did not see; keep only those that start from a snapshot.
        if let Some(selector) = selector.filter(|_| since == 0)
            && self.watchers.len() < MAX_WATCHERS
        {
            let mut watcher = Watcher {
                selector,
                call,
                view: BTreeMap::new(),
            };
            watcher.catch_up();
            self.watchers.push(watcher);
        }
    }

    /// The invariants, after every frame.
    fn check(&mut self) {
        let mut held = BTreeMap::new();
        for namespace in &self.namespaces {
            let all = selector("", namespace, BTreeMap::new()).expect("a valid namespace");
            for service in self.registry.query(&all).0 {
                if let Some(other) =
                    held.insert((service.host.clone(), service.port), service.id.clone())
                {
                    panic!("{} and {other} both hold {}", service.id, service.address());
                }
            }
        }
        for watcher in &mut self.watchers {
            watcher.catch_up();
            let fresh: BTreeMap<String, Seen> = self
                .registry
                .query(&watcher.selector)
                .0
                .iter()
                .map(|s| seen_core(s))
                .collect();
            assert_eq!(watcher.view, fresh, "a watcher of {:?}", watcher.selector);
        }
    }
}

/// The selector the adapter makes of a query's fields, if they are valid.
fn selector(
    pattern: &str,
    namespace: &str,
    metadata: impl IntoIterator<Item = (String, String)>,
) -> Option<Selector> {
    Some(Selector {
        namespace: namespace_or_default(namespace).ok()?.to_string(),
        pattern: pattern.parse().ok()?,
        metadata: metadata.into_iter().collect(),
    })
}

fn frames(mut data: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        let (frame, rest) = rest.split_at(usize::from(len).min(rest.len()));
        frames.push(frame);
        data = rest;
        if frames.len() == MAX_FRAMES {
            break;
        }
    }
    frames
}

async fn run(data: &[u8]) {
    let limits = Limits {
        port_range: 20000..=20007,
        port_quarantine: Duration::from_secs(2),
        default_ttl: Duration::from_secs(5),
        max_registrations_per_session: 16,
        history: 64,
        watch_buffer: 16,
        ..Limits::default()
    };
    let (registry, _reaper) = Registry::new(limits);
    let (_stop, stop) = tokio::sync::watch::channel(false);
    let server = RegistryServer::new(RegistryService::new(
        registry.clone(),
        Arc::new(Auth::default()),
        64,
        stop,
    ));
    let mut h = Harness {
        server,
        registry,
        sessions: Vec::new(),
        namespaces: BTreeSet::from(["default".to_string()]),
        watchers: Vec::new(),
    };

    // Two sessions, each holding a registration, and a watcher of all.
    h.watch(pb::WatchRequest::default());
    for (role, id, port) in [("web@1.0.0", "a", 20000), ("web@1.2.0", "b", 0)] {
        h.heartbeat(vec![pb::HeartbeatRequest {
            kind: Some(In::Open(pb::OpenSession {
                ttl_ms: 10_000,
                client_name: "fuzz".into(),
            })),
        }]);
        h.register(pb::RegisterRequest {
            role: role.into(),
            id: id.into(),
            port,
            metadata: [("k".to_string(), id.to_string())].into(),
            ..Default::default()
        });
    }
    h.check();

    for frame in frames(data) {
        if let Ok(m) = pb::HeartbeatRequest::decode(frame) {
            h.apply_heartbeat(m).await;
        }
        if let Ok(m) = pb::RegisterRequest::decode(frame) {
            h.register(m);
        }
        if let Ok(mut m) = pb::UpdateRequest::decode(frame) {
            m.session_id = h.session(m.session_id);
            let _ = h.unary::<pb::UpdateResponse>("Update", m.encode_to_vec());
        }
        if let Ok(mut m) = pb::FreeRequest::decode(frame) {
            m.session_id = h.session(m.session_id);
            let _ = h.unary::<pb::FreeResponse>("Free", m.encode_to_vec());
        }
        if let Ok(m) = pb::QueryRequest::decode(frame) {
            let valid = selector(&m.pattern, &m.namespace, m.metadata.clone()).is_some();
            let answer = h.unary::<pb::QueryResponse>("Query", m.encode_to_vec());
            assert_eq!(answer.is_ok(), valid, "a query answered iff it is valid");
        }
        if let Ok(mut m) = pb::GetRequest::decode(frame) {
            // The timeout would only make it wait longer: it is not waited on.
            m.timeout_ms = 0;
            if let Some(call) = h.call("Get", &[m.encode_to_vec()]) {
                for message in call.read.messages {
                    let answer = pb::GetResponse::decode(message).expect("a Get answer decodes");
                    assert!(
                        !answer.services.is_empty(),
                        "Get answers when something matches"
                    );
                }
            }
        }
        if let Ok(m) = pb::WatchRequest::decode(frame) {
            h.watch(m);
        }
        h.check();
    }
}

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    // No cooperative budget: this polls many times in one task poll, and a
    // spent budget would make a ready watch look idle.
    runtime.block_on(tokio::task::unconstrained(run(data)));
});
