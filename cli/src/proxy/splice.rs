//! Copying a TCP connection both ways through kernel pipes (splice(2)):
//! the bytes never enter the proxy's memory, so a bulk transfer costs two
//! copies fewer than reading and writing them.

use std::io;
use std::os::fd::AsRawFd;

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use nix::sys::socket::Shutdown;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// What a pipe holds, and so what one splice moves at most.
const PIPE_SIZE: usize = 1 << 20;

/// Copies both ways until each side has closed its writing half, or
/// either fails.
pub(crate) async fn both_ways(a: &TcpStream, b: &TcpStream) -> io::Result<()> {
    tokio::try_join!(one_way(a, b), one_way(b, a)).map(|_| ())
}

/// Copies `from` into `to` through a pipe of its own; at the end of
/// `from`, shuts `to` for writing.
async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<()> {
    let (pipe_out, pipe_in) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    // The default 64 KiB works too, in more calls.
    let _ = fcntl(&pipe_in, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE as i32));
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    loop {
        let read = from
            .async_io(Interest::READABLE, || {
                Ok(splice(from, None, &pipe_in, None, PIPE_SIZE, flags)?)
            })
            .await?;
        if read == 0 {
            let _ = nix::sys::socket::shutdown(to.as_raw_fd(), Shutdown::Write);
            return Ok(());
        }
        let mut left = read;
        while left > 0 {
            left -= to
                .async_io(Interest::WRITABLE, || {
                    Ok(splice(&pipe_out, None, to, None, left, flags)?)
                })
                .await?;
        }
    }
}
