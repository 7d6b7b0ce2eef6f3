//! Registers `web@1.2.3` on a port the registry assigns and answers every
//! HTTP request with "beep boop", until Ctrl-C, which closes its session so
//! that the registration goes at once rather than a ttl later. The
//! registry address comes from `SEAPORT_SERVER` (default 127.0.0.1:9090).

use seaport_client::{RegisterOptions, SeaportClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = std::env::var("SEAPORT_SERVER").unwrap_or_else(|_| "127.0.0.1:9090".into());
    let client = SeaportClient::connect([server]).await?;
    let (listener, registration) = client.bind("web@1.2.3", RegisterOptions::default()).await?;
    // Listening for Ctrl-C from before the port is announced.
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    println!("web@1.2.3 listening on {}", registration.port());
    loop {
        let (mut socket, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = &mut stop => {
                client.close().await;
                return Ok(());
            }
        };
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await;
            let body = "beep boop\n";
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}
