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
pub use crate::sha256::{Sha256, sha256_hex};

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
        } else if let Some(n) = line
            .strip_prefix("DOWN ")
            .and_then(|n| n.parse::<usize>().ok())
        {
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

/// Answers every connection with the address and port it came from (`peer 192.0.2.2:40000`)
/// and closes it: shows what source a target sees.
pub fn peer_server(ns: &Netns, addr: SocketAddr, _name: &str) -> Server {
    serve_tcp(ns, addr, move |mut c| {
        let peer = c.peer_addr().map(|p| p.to_string()).unwrap_or_default();
        let _ = c.write_all(format!("peer {peer}\n").as_bytes());
        let _ = c.shutdown(Shutdown::Write);
    })
}

/// Sets a stop flag when dropped: made first inside a `std::thread::scope` whose threads
/// loop until the flag is set, so a failed assertion in the scope stops them and the scope
/// can return its panic instead of waiting for them for ever.
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `read`, again when a signal to this process interrupted it: a read with a timeout
/// (`SO_RCVTIMEO`) is never restarted by the kernel, and nothing was lost.
pub fn read_some(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// How [`http_get`] waits: for the connection, for each read, and between reads (a slow
/// reader when not zero).
#[derive(Clone, Copy, Debug)]
pub struct HttpWait {
    pub connect: Duration,
    pub read: Duration,
    pub pause: Duration,
}

/// One HTTP/1.0 `GET path` with `Host: host` from `client` to `to`, read to the end:
/// (the response head, the body).
pub fn http_get(
    client: &Netns,
    to: SocketAddr,
    path: &str,
    host: &str,
    wait: HttpWait,
) -> std::io::Result<(String, Vec<u8>)> {
    let mut s = connect(client, None, to, wait.connect)?;
    s.set_read_timeout(Some(wait.read))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = read_some(&mut s, &mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if !wait.pause.is_zero() {
            std::thread::sleep(wait.pause);
        }
    }
    let at = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head in {} bytes", out.len())))?;
    let head = String::from_utf8_lossy(&out[..at]).into_owned();
    Ok((head, out.split_off(at + 4)))
}
