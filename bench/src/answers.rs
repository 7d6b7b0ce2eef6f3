//! Requests and answers as the load generator sends and reads them. It
//! shares the machine's cores with the server, so every microsecond it
//! spends on its own side is taken from the server being measured: it
//! reads answers only as far as the fields it checks (prost skips the
//! rest), and it builds its register and free requests from shared bytes,
//! not from strings copied for every call (a string field and a bytes
//! field are the same on the wire).

use prost::bytes::Bytes;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

use seaport::pb;

/// `QueryResponse` with each service left encoded, to be counted.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Matches {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub(crate) services: Vec<Bytes>,
}

/// `RegisterRequest` as the bench sends it: its strings shared, not copied.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Register {
    #[prost(bytes = "bytes", tag = "1")]
    pub(crate) session_id: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub(crate) role: Bytes,
    #[prost(bytes = "bytes", tag = "4")]
    pub(crate) host: Bytes,
}

/// `FreeRequest` as the bench sends it.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Free {
    #[prost(bytes = "bytes", tag = "1")]
    pub(crate) session_id: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub(crate) id: Bytes,
}

/// An answer whose content the bench does not read (prost skips it all).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Unread {}

/// `RegisterResponse` read as far as the new registration's id.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Registered {
    #[prost(message, optional, tag = "1")]
    pub(crate) service: Option<Id>,
}

/// `Service` read as far as its id.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Id {
    #[prost(bytes = "bytes", tag = "1")]
    pub(crate) id: Bytes,
}

/// A `seaport.v1.Registry` client that decodes answers as the types above.
#[derive(Clone)]
pub(crate) struct Light(tonic::client::Grpc<Channel>);

impl Light {
    pub(crate) fn new(channel: Channel) -> Light {
        Light(tonic::client::Grpc::new(channel))
    }

    async fn call<Q, A>(&mut self, path: &'static str, request: Q) -> A
    where
        Q: prost::Message + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        self.0.ready().await.unwrap();
        self.0
            .unary(
                tonic::Request::new(request),
                PathAndQuery::from_static(path),
                ProstCodec::default(),
            )
            .await
            .unwrap()
            .into_inner()
    }

    pub(crate) async fn query(&mut self, request: pb::QueryRequest) -> Matches {
        self.call("/seaport.v1.Registry/Query", request).await
    }

    /// The new registration's id.
    pub(crate) async fn register(&mut self, request: Register) -> Bytes {
        let answer: Registered = self.call("/seaport.v1.Registry/Register", request).await;
        let id = answer.service.expect("Register answers its service").id;
        assert!(!id.is_empty(), "Register answers the registration's id");
        id
    }

    pub(crate) async fn free(&mut self, request: Free) {
        let _: Unread = self.call("/seaport.v1.Registry/Free", request).await;
    }
}
