//! Real servers and clients inside namespaces. A socket belongs to the namespace of the
//! thread that created it, so a server is bound while the creating thread is inside the
//! backend's namespace and then served from ordinary threads.

use std::{
    io::{Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::Netns;

/// A server thread that stops when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn listener(ns: &Netns, addr: SocketAddr) -> TcpListener {
    let _inside = ns.enter();
    let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", ns.name()));
    l.set_nonblocking(true).expect("nonblocking");
    l
}

/// Accepts connections until stopped; each is handled by `handle` on its own thread.
fn serve_tcp(
    ns: &Netns,
    addr: SocketAddr,
    handle: impl Fn(TcpStream) + Send + Sync + 'static,
) -> Server {
    let l = listener(ns, addr);
    let stop = Arc::new(AtomicBool::new(false));
    let handle = Arc::new(handle);
    let s = stop.clone();
    let t = std::thread::spawn(move || {
        let mut workers = Vec::new();
        while !s.load(Ordering::SeqCst) {
            match l.accept() {
                Ok((c, _)) => {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
                    let h = handle.clone();
                    workers.push(std::thread::spawn(move || h(c)));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
            workers.retain(|w| !w.is_finished());
        }
        for w in workers {
            let _ = w.join();
        }
    });
    Server {
        stop,
        threads: vec![t],
        addr,
    }
}

/// Answers every connection with `name\n` and closes it (after reading what the client sent,
/// if anything, up to a newline).
pub fn identity_server(ns: &Netns, addr: SocketAddr, name: &str) -> Server {
    let name = name.to_owned();
    serve_tcp(ns, addr, move |mut c| {
        let _ = c.write_all(format!("{name}\n").as_bytes());
        let _ = c.shutdown(Shutdown::Write);
        let mut sink = [0u8; 256];
        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
        while matches!(c.read(&mut sink), Ok(n) if n > 0) {}
    })
}

/// Writes `name\n`, then echoes everything it receives until the client closes.
pub fn echo_server(ns: &Netns, addr: SocketAddr, name: &str) -> Server {
    let name = name.to_owned();
    serve_tcp(ns, addr, move |mut c| {
        let _ = c.write_all(format!("{name}\n").as_bytes());
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    })
}

/// Reads everything until the client half-closes, then answers `"<bytes> <fnv1a64>\n"` of
/// what it received: a bulk upload's receipt.
pub fn sink_server(ns: &Netns, addr: SocketAddr, _name: &str) -> Server {
    serve_tcp(ns, addr, move |mut c| {
        let mut buf = vec![0u8; 256 * 1024];
        let (mut n, mut h) = (0u64, FNV_OFFSET);
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(r) => {
                    h = fnv1a(h, &buf[..r]);
                    n += r as u64;
                }
                Err(_) => return,
            }
        }
        let _ = c.write_all(format!("{n} {h:016x}\n").as_bytes());
    })
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `data`, continuing from `h`.
pub fn fnv1a(mut h: u64, data: &[u8]) -> u64 {
    for b in data {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A minimal HTTP/1.1 server: `GET /health` -> 200, `GET /bytes/N` -> N bytes of a
/// deterministic pattern, anything else -> `name` as the body.
pub fn http_server(ns: &Netns, addr: SocketAddr, name: &str) -> Server {
    let name = name.to_owned();
    serve_tcp(ns, addr, move |mut c| {
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
            if req.len() > 16 * 1024 {
                return;
            }
        }
        let line = String::from_utf8_lossy(&req);
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let body: Vec<u8> = if let Some(n) = path.strip_prefix("/bytes/") {
            pattern(n.parse().unwrap_or(0))
        } else if path == "/health" {
            b"ok\n".to_vec()
        } else {
            format!("{name}\n").into_bytes()
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Backend: {name}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = c.write_all(head.as_bytes());
        let _ = c.write_all(&body);
        let _ = c.shutdown(Shutdown::Write);
    })
}

/// `n` bytes of a pattern that detects loss, duplication and reordering.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left((i % 29) as u32) as u8
        })
        .collect()
}

/// Answers every datagram with `name`.
pub fn udp_identity_server(ns: &Netns, addr: SocketAddr, name: &str) -> Server {
    let sock = {
        let _inside = ns.enter();
        UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind udp {addr}: {e}"))
    };
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let name = name.as_bytes().to_vec();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !s.load(Ordering::SeqCst) {
            if let Ok((_, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&name, from);
            }
        }
    });
    Server {
        stop,
        threads: vec![t],
        addr,
    }
}

/// Connects from the client namespace from a chosen source port (0: any), sends `send`,
/// and returns everything the server sent until it closed.
pub fn tcp_request(
    client: &Netns,
    src: Option<SocketAddr>,
    dst: SocketAddr,
    send: &[u8],
) -> std::io::Result<Vec<u8>> {
    let mut s = connect(client, src, dst, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    if !send.is_empty() {
        s.write_all(send)?;
    }
    // Half-close: servers that echo until the client is done then close their side.
    s.shutdown(Shutdown::Write)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// A TCP connection made from inside `ns`, optionally from a fixed source address/port.
pub fn connect(
    ns: &Netns,
    src: Option<SocketAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let _inside = ns.enter();
    let domain = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    match src {
        None => TcpStream::connect_timeout(&dst, timeout),
        Some(src) => {
            // std has no bind-before-connect; do it with libc.
            // SAFETY: plain socket calls on a descriptor we own; sockaddr built by std.
            unsafe {
                let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let one: libc::c_int = 1;
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_REUSEADDR,
                    (&raw const one).cast(),
                    4,
                );
                let (sa, len) = sockaddr(src);
                if libc::bind(fd, (&raw const sa).cast(), len) != 0 {
                    let e = std::io::Error::last_os_error();
                    libc::close(fd);
                    return Err(e);
                }
                let (da, dlen) = sockaddr(dst);
                let tv = libc::timeval {
                    tv_sec: timeout.as_secs() as i64,
                    tv_usec: 0,
                };
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_SNDTIMEO,
                    (&raw const tv).cast(),
                    size_of::<libc::timeval>() as u32,
                );
                if libc::connect(fd, (&raw const da).cast(), dlen) != 0 {
                    let e = std::io::Error::last_os_error();
                    libc::close(fd);
                    return Err(e);
                }
                use std::os::fd::FromRawFd;
                Ok(TcpStream::from_raw_fd(fd))
            }
        }
    }
}

fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zero is a valid starting point.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&raw mut ss).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut ss).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Sends one UDP datagram from the client namespace and returns the reply.
pub fn udp_request(client: &Netns, dst: SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let sock = {
        let _inside = client.enter();
        let any: IpAddr = if dst.is_ipv4() {
            "0.0.0.0".parse().unwrap()
        } else {
            "::".parse().unwrap()
        };
        UdpSocket::bind(SocketAddr::new(any, 0))?
    };
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    sock.send_to(payload, dst)?;
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf)?;
    Ok(buf[..n].to_vec())
}

/// SHA-256 (FIPS 180-4) of `data`, as lowercase hex: a check of bulk transfers that owes
/// nothing to the balancer's own code.
pub fn sha256_hex(data: &[u8]) -> String {
    let mut s = Sha256::new();
    s.update(data);
    s.hex()
}

/// An incremental SHA-256.
pub struct Sha256 {
    h: [u32; 8],
    buf: Vec<u8>,
    len: u64,
}

const SHA_K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
];

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    pub fn new() -> Self {
        Self {
            h: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c,
                0x1f83d9ab, 0x5be0cd19,
            ],
            buf: Vec::with_capacity(64),
            len: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.buf.is_empty() {
            let take = (64 - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == 64 {
                let block: [u8; 64] = self.buf[..].try_into().expect("64 bytes");
                self.block(&block);
                self.buf.clear();
            }
        }
        let mut chunks = data.chunks_exact(64);
        for c in &mut chunks {
            self.block(c.try_into().expect("64 bytes"));
        }
        self.buf.extend_from_slice(chunks.remainder());
    }

    fn block(&mut self, b: &[u8; 64]) {
        let mut w = [0u32; 64];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut bb, mut c, mut d, mut e, mut f, mut g, mut h] = self.h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = h
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(SHA_K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & bb) ^ (a & c) ^ (bb & c);
            let t2 = s0.wrapping_add(maj);
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = bb;
            bb = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in self.h.iter_mut().zip([a, bb, c, d, e, f, g, h]) {
            *x = x.wrapping_add(y);
        }
    }

    pub fn hex(mut self) -> String {
        let bits = self.len * 8;
        let mut pad = vec![0x80u8];
        while (self.len as usize + pad.len()) % 64 != 56 {
            pad.push(0);
        }
        pad.extend_from_slice(&bits.to_be_bytes());
        let len = self.len;
        self.update(&pad);
        self.len = len;
        self.h.iter().map(|x| format!("{x:08x}")).collect()
    }
}

/// The bulk-transfer server: a first line `UP\n` is followed by the client's data until it
/// half-closes, answered with the data's SHA-256 in hex; `DOWN <n>\n` is answered with `n`
/// bytes of `pattern` (sent in 64 KiB pieces), then the connection closes.
pub fn bulk_server(ns: &Netns, addr: SocketAddr, _name: &str) -> Server {
    serve_tcp(ns, addr, move |mut c| {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while line.len() < 64 {
            match c.read(&mut b) {
                Ok(1) if b[0] == b'\n' => break,
                Ok(1) => line.push(b[0]),
                _ => return,
            }
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        if line == "UP" {
            let mut sha = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => sha.update(&buf[..n]),
                    Err(_) => return,
                }
            }
            let _ = c.write_all(format!("{}\n", sha.hex()).as_bytes());
        } else if let Some(n) = line.strip_prefix("DOWN ").and_then(|n| n.parse::<usize>().ok()) {
            let data = pattern(n);
            for piece in data.chunks(64 * 1024) {
                if c.write_all(piece).is_err() {
                    return;
                }
            }
        }
        let _ = c.shutdown(Shutdown::Write);
    })
}

#[cfg(test)]
mod sha_tests {
    #[test]
    fn known_digests() {
        assert_eq!(
            super::sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            super::sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut s = super::Sha256::new();
        for _ in 0..1000 {
            s.update(&[b'a'; 1000]);
        }
        assert_eq!(s.hex(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    }
}

/// Answers every connection with the address and port it came from (`peer 192.0.2.2:40000`)
/// and closes it: shows what source a target sees.
pub fn peer_server(ns: &Netns, addr: SocketAddr, _name: &str) -> Server {
    serve_tcp(ns, addr, move |mut c| {
        let peer = c.peer_addr().map(|p| p.to_string()).unwrap_or_default();
        let _ = c.write_all(format!("peer {peer}\n").as_bytes());
        let _ = c.shutdown(Shutdown::Write);
    })
}
