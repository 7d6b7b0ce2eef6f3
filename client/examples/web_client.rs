//! Waits for any `web@1.2.x`, asks it for `/` over HTTP and prints the
//! reply's body. Start it before the server: `get` waits.

use seaport_client::SeaportClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = std::env::var("SEAPORT_SERVER").unwrap_or_else(|_| "127.0.0.1:9090".into());
    let client = SeaportClient::connect([server]).await?;
    let web = client.get("web@1.2.x").await?;
    let mut socket = tokio::net::TcpStream::connect(web[0].address()).await?;
    socket
        .write_all(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n")
        .await?;
    let mut response = String::new();
    socket.read_to_string(&mut response).await?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    print!("{body}");
    Ok(())
}
