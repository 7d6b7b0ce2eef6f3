//! Waits for any `web@1.2.x`, asks it for `/` over HTTP and prints the
//! reply's body. Start it before the server: `get` waits.

use seaport_client::SeaportClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = std::env::var("SEAPORT_SERVER").unwrap_or_else(|_| "127.0.0.1:9090".into());
    let client = SeaportClient::connect([server]).await?;
    let web = client.get("web@1.2.x").await?;
    // A registration is visible the moment it is made, a moment before its
    // listener accepts: retry a refused connection briefly, as any client should.
    let mut attempts = 0;
    let mut socket = loop {
        match tokio::net::TcpStream::connect(web[0].address()).await {
            Ok(socket) => break socket,
            Err(e) if attempts < 20 => {
                attempts += 1;
                eprintln!(
                    "web_client: {} not accepting yet ({e}); retrying",
                    web[0].address()
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    socket
        .write_all(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    socket.read_to_string(&mut response).await?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    print!("{body}");
    Ok(())
}
