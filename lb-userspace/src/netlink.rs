//! A route-netlink client for what the daemon asks of the kernel: resolving neighbours
//! (`neighbour`) and installing the routes routing daemons announce (`announce`). Messages
//! are netlink-packet-route's; this is only the socket, requests with their
//! acknowledgement, and dumps.

use std::{io, time::Duration};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use tokio::io::unix::AsyncFd;

/// How long the kernel has to answer a request.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// A route-netlink socket.
pub struct RouteSocket {
    socket: AsyncFd<Socket>,
    sequence: u32,
}

/// The bytes of a request: `message` with `flags` (plus `NLM_F_REQUEST`).
pub fn encode(message: RouteNetlinkMessage, flags: u16, sequence: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = sequence;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

impl RouteSocket {
    pub fn new() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.set_non_blocking(true)?;
        Ok(Self {
            // SAFETY: the socket owns its descriptor, which stays open and the same until
            // the AsyncFd (which owns the socket) is dropped.
            socket: unsafe { AsyncFd::register(socket) }?,
            sequence: 0,
        })
    }

    async fn send(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.sequence = self.sequence.wrapping_add(1);
        let seq = self.sequence;
        let request = encode(message, flags, seq);
        let kernel = SocketAddr::new(0, 0);
        loop {
            let mut guard = self.socket.writable().await?;
            if let Ok(r) = guard.try_io(|s| s.get_ref().send_to(&request, &kernel, 0)) {
                r?;
                return Ok(seq);
            }
        }
    }

    /// Reads answers to request `seq` until `done` says the exchange is over.
    async fn answers<T>(
        &mut self,
        seq: u32,
        mut each: impl FnMut(NetlinkMessage<RouteNetlinkMessage>) -> Option<io::Result<T>>,
    ) -> io::Result<T> {
        let read = async {
            loop {
                let mut guard = self.socket.readable().await?;
                let Ok(r) = guard.try_io(|s| s.get_ref().recv_from_full()) else {
                    continue;
                };
                let (bytes, _) = r?;
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest) else {
                        break;
                    };
                    let len = (m.header.length as usize).clamp(1, rest.len());
                    rest = &rest[len..];
                    if m.header.sequence_number != seq {
                        continue;
                    }
                    if let Some(done) = each(m) {
                        return done;
                    }
                }
            }
        };
        tokio::time::timeout(ANSWER_TIMEOUT, read)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer from the kernel"))?
    }

    /// Sends a request with `flags` and waits for the kernel's acknowledgement.
    pub async fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(message, flags | NLM_F_ACK).await?;
        self.answers(seq, |m| match m.payload {
            NetlinkPayload::Error(e) => Some(match e.code {
                None => Ok(()),
                Some(_) => Err(e.to_io()),
            }),
            _ => None,
        })
        .await
    }

    /// Sends a dump request and collects every message of the answer.
    pub async fn dump(
        &mut self,
        message: RouteNetlinkMessage,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(message, NLM_F_DUMP).await?;
        let mut out = Vec::new();
        self.answers(seq, |m| match m.payload {
            NetlinkPayload::InnerMessage(inner) => {
                out.push(inner);
                None
            }
            NetlinkPayload::Done(_) => Some(Ok(())),
            NetlinkPayload::Error(e) => Some(match e.code {
                None => Ok(()),
                Some(_) => Err(e.to_io()),
            }),
            _ => None,
        })
        .await?;
        Ok(out)
    }
}
