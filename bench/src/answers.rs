//! Answers as the load generator reads them: only the fields it checks.
//! It shares the machine's cores with the server, so every microsecond it
//! spends decoding services it never looks at is taken from the server
//! being measured; prost skips the fields these messages leave out.

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

/// `RegisterResponse` read as far as the new registration's id.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Registered {
    #[prost(message, optional, tag = "1")]
    pub(crate) service: Option<Id>,
}

/// `Service` read as far as its id.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Id {
    #[prost(string, tag = "1")]
    pub(crate) id: String,
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
    pub(crate) async fn register(&mut self, request: pb::RegisterRequest) -> String {
        let answer: Registered = self.call("/seaport.v1.Registry/Register", request).await;
        answer.service.expect("Register answers its service").id
    }

    pub(crate) async fn free(&mut self, request: pb::FreeRequest) {
        let _: Registered = self.call("/seaport.v1.Registry/Free", request).await;
    }
}
