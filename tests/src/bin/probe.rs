//! `enforcer-probe`: the misbehaving agent of the integration tests.
//!
//! Each argument is one step, `OP:ARG[:ARG]` (network steps: `OP:ADDRESS`),
//! done with the syscall a real program would make; each prints one JSON
//! line `{"step":..,"errno":N}` (0 on success), so tests can assert the
//! exact errno of every attempt.

use std::{
    ffi::CString,
    io::{BufRead as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::unix::process::CommandExt as _,
    os::{linux::net::SocketAddrExt as _, unix::net},
    time::Duration,
};

fn c(path: &str) -> CString {
    CString::new(path).expect("path without NUL")
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

/// 0 if `ret` is not -1, else errno.
fn check(ret: libc::c_long) -> i32 {
    if ret == -1 { errno() } else { 0 }
}

fn open(path: &str, flags: i32) -> Result<i32, i32> {
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(c(path).as_ptr(), flags, 0o644) };
    if fd < 0 { Err(errno()) } else { Ok(fd) }
}

fn close(fd: i32) {
    // SAFETY: closing an fd we opened.
    unsafe { libc::close(fd) };
}

/// Opens `path` with `flags`, writes a byte if it opened for writing.
fn open_write(path: &str, flags: i32) -> i32 {
    match open(path, flags) {
        Ok(fd) => {
            // SAFETY: one byte from a static buffer.
            let r = unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) };
            close(fd);
            check(r as libc::c_long)
        }
        Err(e) => e,
    }
}

fn read(path: &str) -> i32 {
    match open(path, libc::O_RDONLY) {
        Ok(fd) => {
            let mut buf = [0u8; 64];
            // SAFETY: reading into a local buffer of its size.
            let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            close(fd);
            check(r as libc::c_long)
        }
        Err(e) => e,
    }
}

/// Opens `path` read-only, then re-opens it for writing via /proc/self/fd.
fn reopen_write(path: &str) -> i32 {
    match open(path, libc::O_RDONLY) {
        Ok(fd) => {
            let r = open_write(&format!("/proc/self/fd/{fd}"), libc::O_WRONLY | libc::O_APPEND);
            close(fd);
            r
        }
        Err(e) => e,
    }
}

/// An anonymous file in `dir` (`O_TMPFILE`), then linked in as `target`.
fn tmpfile_link(dir: &str, target: &str) -> i32 {
    match open(dir, libc::O_TMPFILE | libc::O_WRONLY) {
        Ok(fd) => {
            // SAFETY: NUL-terminated paths; AT_EMPTY_PATH links the fd itself.
            let r = unsafe { libc::linkat(fd, c"".as_ptr(), libc::AT_FDCWD, c(target).as_ptr(), libc::AT_EMPTY_PATH) };
            close(fd);
            check(r.into())
        }
        Err(e) => e,
    }
}

fn io_errno(result: std::io::Result<()>) -> i32 {
    result.err().map_or(0, |e| e.raw_os_error().unwrap_or(-1))
}

/// A unix socket address: a path, or `@name` for an abstract one.
fn unix_addr(name: &str) -> std::io::Result<net::SocketAddr> {
    match name.strip_prefix('@') {
        Some(abstract_name) => net::SocketAddr::from_abstract_name(abstract_name),
        None => net::SocketAddr::from_pathname(name),
    }
}

fn dns_query(tcp: bool, arg: &str) -> i32 {
    use hickory_proto::{
        op::{Message, Query},
        rr::{Name, RecordType},
    };
    let (name, server) = arg.split_once('@').expect("NAME@SERVER");
    let server: SocketAddr = server.parse().expect("server address");
    let mut query = Message::query();
    query.metadata.id = 4242;
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_ascii(name).expect("name"), RecordType::A));
    let bytes = query.to_vec().expect("encode query");
    let reply = if tcp {
        (|| {
            use std::io::{Read as _, Write as _};
            let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let len = u16::try_from(bytes.len()).unwrap_or(0).to_be_bytes();
            stream.write_all(&[&len[..], &bytes].concat())?;
            let mut len = [0u8; 2];
            stream.read_exact(&mut len)?;
            let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut reply)?;
            Ok::<_, std::io::Error>(reply)
        })()
    } else {
        (|| {
            let socket = UdpSocket::bind(if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
            socket.set_read_timeout(Some(Duration::from_secs(5)))?;
            socket.send_to(&bytes, server)?;
            let mut buf = vec![0u8; 4096];
            let (len, from) = socket.recv_from(&mut buf)?;
            // As resolvers do: only the server asked may answer.
            if from != server {
                return Err(std::io::Error::other(format!("reply from {from}, not {server}")));
            }
            buf.truncate(len);
            Ok(buf)
        })()
    };
    match reply {
        Err(e) => e.raw_os_error().unwrap_or(999),
        Ok(reply) => match Message::from_vec(&reply) {
            Err(_) => 998,
            Ok(m) if m.answers.is_empty() => 100 + i32::from(u16::from(m.metadata.response_code)),
            Ok(_) => 0,
        },
    }
}

/// `to` as a `sockaddr_storage` and its length.
fn socket2_addr(to: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; we fill one of its forms.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match to {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or_default(),
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::sa_family_t::try_from(libc::AF_INET6).unwrap_or_default(),
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, libc::socklen_t::try_from(len).unwrap_or_default())
}

/// `count` TCP connects to `to`, one per `interval` if given; the errno of
/// the last.
fn connect_repeatedly(count: &str, interval: Option<Duration>, to: &str) -> i32 {
    let to: SocketAddr = to.parse().expect("address");
    let start = std::time::Instant::now();
    let mut last = 0;
    for i in 0..count.parse::<u32>().expect("count") {
        if let Some(interval) = interval {
            std::thread::sleep((start + interval * i).saturating_duration_since(std::time::Instant::now()));
        }
        last = io_errno(TcpStream::connect_timeout(&to, Duration::from_secs(5)).map(drop));
    }
    last
}

/// The `tcp-loop-bg` thread: a connect to `to` every millisecond, counted.
fn tcp_loop_bg(to: SocketAddr) -> i32 {
    std::thread::spawn(move || {
        loop {
            if io_errno(TcpStream::connect_timeout(&to, Duration::from_secs(5)).map(drop)) == libc::EPERM {
                TCP_LOOP_REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            TCP_LOOP_TRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    0
}

/// Datagrams received by `udp-bind-bg` sockets.
static UDP_RECEIVED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// Connects the `tcp-loop-bg` thread made, and how many were refused (EPERM).
static TCP_LOOP_TRIES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static TCP_LOOP_REFUSED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Connected sockets `tcp-keep` and `udp-keep` hold open, by the order
/// they were made in, for the `kept-*` steps.
static KEPT: std::sync::Mutex<Vec<std::os::fd::OwnedFd>> = std::sync::Mutex::new(Vec::new());

/// Keeps a connected socket for the `kept-*` steps.
fn keep(socket: std::io::Result<impl Into<std::os::fd::OwnedFd>>) -> i32 {
    match socket {
        Ok(socket) => {
            KEPT.lock().expect("kept sockets").push(socket.into());
            0
        }
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// The kept socket `n` (`kept-send:N`, `kept-sendfile:N:FILE`).
fn kept(n: &str) -> i32 {
    use std::os::fd::AsRawFd;
    let kept = KEPT.lock().expect("kept sockets");
    kept.get(n.parse::<usize>().expect("a kept socket's number")).map_or(-1, AsRawFd::as_raw_fd)
}

/// Steps on connected sockets kept open for later sends; `None` if `op` is
/// not one.
fn kept_step(op: &str, address: &str) -> Option<i32> {
    let socket_addr = || address.parse::<SocketAddr>().unwrap_or_else(|_| panic!("bad address `{address}`"));
    Some(match op {
        // Connected sockets kept for later sends (by `kept-send:N`...).
        "tcp-keep" => keep(TcpStream::connect_timeout(&socket_addr(), Duration::from_secs(5))),
        "udp-keep" => {
            let to = socket_addr();
            keep(
                UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
                    .and_then(|s| s.connect(to).map(|()| s)),
            )
        }
        // `send(2)` of one byte on kept socket N.
        "kept-send" => {
            // SAFETY: one byte from a static buffer, on a descriptor we hold.
            check(unsafe { libc::send(kept(address), b"x".as_ptr().cast(), 1, 0) } as libc::c_long)
        }
        // `kept-upload:N:BYTES`: BYTES sent on kept socket N in `write(2)`s of
        // up to 16 KiB, as an upload does; the errno of the first that fails.
        "kept-upload" => {
            let (n, bytes) = address.split_once(':').expect("kept-upload:N:BYTES");
            let (fd, mut left) = (kept(n), bytes.parse::<usize>().expect("kept-upload:N:BYTES"));
            let chunk = [b'u'; 16 * 1024];
            let mut failed = 0;
            while left > 0 && failed == 0 {
                // SAFETY: writing from a local buffer of at least that many bytes.
                let wrote = unsafe { libc::write(fd, chunk.as_ptr().cast(), left.min(chunk.len())) };
                failed = check(wrote as libc::c_long);
                left -= usize::try_from(wrote).unwrap_or(0);
            }
            failed
        }
        // `kept-hello:N:NAME`: a TLS ClientHello naming NAME on kept socket
        // N, a `write(2)` per byte; the errno of the first that fails.
        "kept-hello" => {
            let (n, name) = address.split_once(':').expect("kept-hello:N:NAME");
            let fd = kept(n);
            let hello = enforcer_tests::client_hello(name);
            let mut failed = 0;
            for byte in &hello {
                // SAFETY: one byte of a local buffer, on a descriptor we hold.
                failed = check(unsafe { libc::write(fd, std::ptr::from_ref(byte).cast(), 1) } as libc::c_long);
                if failed != 0 {
                    break;
                }
            }
            failed
        }
        // `sendfile(2)` of FILE to kept socket N.
        "kept-sendfile" => {
            let (n, file) = address.split_once(':').expect("kept-sendfile:N:FILE");
            match open(file, libc::O_RDONLY) {
                Ok(fd) => {
                    // SAFETY: sendfile between two descriptors we hold.
                    let r = check(unsafe { libc::sendfile(kept(n), fd, std::ptr::null_mut(), 64) } as libc::c_long);
                    close(fd);
                    r
                }
                Err(e) => e,
            }
        }
        _ => return None,
    })
}

/// TCP Fast Open steps; `None` if `op` is not one.
fn fast_open_step(op: &str, address: &str) -> Option<i32> {
    let socket_addr = || address.parse::<SocketAddr>().unwrap_or_else(|_| panic!("bad address `{address}`"));
    Some(match op {
        // TCP Fast Open: the connect rides on the first sendto.
        "tcp-fastopen" => {
            let to = socket_addr();
            let to = socket2_addr(&to);
            // SAFETY: a TCP socket, sendto(2) with a sockaddr of its length, close(2).
            unsafe {
                let fd = libc::socket(i32::from(to.0.ss_family), libc::SOCK_STREAM, 0);
                let r = libc::sendto(fd, b"x".as_ptr().cast(), 1, libc::MSG_FASTOPEN, (&raw const to.0).cast(), to.1);
                let result = if r < 0 { errno() } else { 0 };
                close(fd);
                result
            }
        }
        // TCP Fast Open by socket option: `connect` returns at once, the
        // first write sends the SYN (with its data where a cookie is known).
        "tcp-fastopen-connect" => {
            const TCP_FASTOPEN_CONNECT: i32 = 30;
            let to = socket2_addr(&socket_addr());
            let one: i32 = 1;
            // SAFETY: a TCP socket, setsockopt(2) with an int, connect(2) with a
            // sockaddr of its length, write(2) of one byte, close(2).
            unsafe {
                let fd = libc::socket(i32::from(to.0.ss_family), libc::SOCK_STREAM, 0);
                let size = libc::socklen_t::try_from(size_of::<i32>()).unwrap_or(4);
                libc::setsockopt(fd, libc::IPPROTO_TCP, TCP_FASTOPEN_CONNECT, (&raw const one).cast(), size);
                let mut r = libc::connect(fd, (&raw const to.0).cast(), to.1) as isize;
                if r == 0 {
                    r = libc::write(fd, b"x".as_ptr().cast(), 1);
                }
                let result = if r < 0 { errno() } else { 0 };
                close(fd);
                result
            }
        }
        _ => return None,
    })
}

/// Network steps; `None` if `op` is not one.
fn net_step(op: &str, address: &str) -> Option<i32> {
    let socket_addr = || address.parse::<SocketAddr>().unwrap_or_else(|_| panic!("bad address `{address}`"));
    let unbound_udp = |to: &SocketAddr| UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" });
    Some(match op {
        "tcp-connect" => io_errno(TcpStream::connect_timeout(&socket_addr(), Duration::from_secs(5)).map(drop)),
        // `tcp-storm:N:ADDRESS`: N connects; the errno of the last.
        "tcp-storm" => {
            let (count, to) = address.split_once(':').expect("tcp-storm:N:ADDRESS");
            connect_repeatedly(count, None, to)
        }
        // `tcp-rate:N:PER_SECOND:ADDRESS`: N connects, paced; the errno of the last.
        "tcp-rate" => {
            let (count, rest) = address.split_once(':').expect("tcp-rate:N:PER_SECOND:ADDRESS");
            let (rate, to) = rest.split_once(':').expect("tcp-rate:N:PER_SECOND:ADDRESS");
            connect_repeatedly(count, Some(Duration::from_secs(1) / rate.parse::<u32>().expect("rate")), to)
        }
        "udp-sendto" => {
            let to = socket_addr();
            io_errno(unbound_udp(&to).and_then(|s| s.send_to(b"ping", to)).map(drop))
        }
        "udp-connect" => {
            let to = socket_addr();
            io_errno(unbound_udp(&to).and_then(|s| s.connect(to)))
        }
        // FAMILY:TYPE:PROTOCOL, numbers, as socket(2) takes them; `socket-keep`
        // leaves the socket open, for another process to take.
        "socket" | "socket-keep" => {
            let n: Vec<i32> = address.split(':').map(|n| n.parse().expect("socket numbers")).collect();
            // SAFETY: socket(2) with plain values; the fd is closed unless kept.
            let fd = unsafe { libc::socket(n[0], n[1], n[2]) };
            if fd < 0 {
                errno()
            } else {
                if op == "socket" {
                    close(fd);
                }
                0
            }
        }
        // NAME:PORT through getaddrinfo (the system resolver), then a TCP
        // connect to the first address; 1000 when the name does not resolve.
        "resolve-connect" => {
            let resolved = std::net::ToSocketAddrs::to_socket_addrs(address).map(|mut addrs| addrs.next());
            match resolved {
                Ok(Some(to)) => io_errno(TcpStream::connect_timeout(&to, Duration::from_secs(5)).map(drop)),
                Ok(None) | Err(_) => 1000,
            }
        }
        // NAME@SERVER: one A query of our own over UDP or TCP; 0 when
        // answered with addresses, 100 + the response code otherwise.
        "dns-udp" | "dns-tcp" => dns_query(op == "dns-tcp", address),
        // Serves a unix socket until killed (a stand-in daemon for the demo).
        "unix-listen" => {
            let listener = net::UnixListener::bind(address).expect("bind the unix socket");
            loop {
                drop(listener.accept());
            }
        }
        // A listener in the background that greets every connection.
        "tcp-listen-bg" => match std::net::TcpListener::bind(socket_addr()) {
            Ok(listener) => {
                std::thread::spawn(move || {
                    for stream in listener.incoming().flatten() {
                        let _ = std::io::Write::write_all(&mut &stream, b"hello\n");
                    }
                });
                0
            }
            Err(e) => e.raw_os_error().unwrap_or(-1),
        },
        // A UDP socket in the background that counts what it receives.
        "udp-bind-bg" => match UdpSocket::bind(socket_addr()) {
            Ok(socket) => {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while socket.recv_from(&mut buf).is_ok() {
                        UDP_RECEIVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
                0
            }
            Err(e) => e.raw_os_error().unwrap_or(-1),
        },
        // How many datagrams the `udp-bind-bg` sockets received so far.
        "udp-received" => i32::try_from(UDP_RECEIVED.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(-1),
        // A thread that connects to ADDRESS every millisecond until the
        // probe ends, counting the refusals.
        "tcp-loop-bg" => tcp_loop_bg(socket_addr()),
        "tcp-loop-tries" => i32::try_from(TCP_LOOP_TRIES.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(-1),
        "tcp-loop-refused" => i32::try_from(TCP_LOOP_REFUSED.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(-1),
        "unix-connect" => io_errno(unix_addr(address).and_then(|a| net::UnixStream::connect_addr(&a)).map(drop)),
        "unix-sendto" => {
            io_errno(unix_addr(address).and_then(|a| net::UnixDatagram::unbound()?.send_to_addr(b"ping", &a)).map(drop))
        }
        _ => return None,
    })
}

/// A number in decimal or `0x` hex.
fn number(text: &str) -> i64 {
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => i64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.unwrap_or_else(|_| panic!("bad number `{text}`"))
}

/// Runs `path` (a fresh process) and waits; the errno of its exec, or 0.
fn exec(path: &str) -> i32 {
    match std::process::Command::new(path).arg0("true").stdout(std::process::Stdio::null()).status() {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// A copy of /bin/true in a memfd, executed with `execveat(AT_EMPTY_PATH)`.
fn memfd_exec() -> i32 {
    let program = std::fs::read("/bin/true").expect("read /bin/true");
    // SAFETY: memfd_create, write of a local buffer, fork; the child only
    // calls execveat and _exit.
    unsafe {
        let fd = libc::memfd_create(c"agent-payload".as_ptr(), 0);
        if fd < 0 {
            return errno();
        }
        if libc::write(fd, program.as_ptr().cast(), program.len()) < 0 {
            return errno();
        }
        let argv = [c"true".as_ptr(), std::ptr::null()];
        let envp: [*const libc::c_char; 1] = [std::ptr::null()];
        let pid = libc::fork();
        if pid == 0 {
            libc::syscall(libc::SYS_execveat, fd, c"".as_ptr(), argv.as_ptr(), envp.as_ptr(), libc::AT_EMPTY_PATH);
            libc::_exit(errno() + 100);
        }
        let mut status = 0;
        libc::waitpid(pid, &raw mut status, 0);
        close(fd);
        let code = libc::WEXITSTATUS(status);
        if code >= 100 { code - 100 } else { 0 }
    }
}

/// The i386 ABI on x86-64: `getpid` through `int 0x80` (number 20 there).
#[cfg(target_arch = "x86_64")]
fn int80_getpid() -> i32 {
    let mut ret: i64 = 20;
    // SAFETY: the i386 getpid takes no arguments and touches no memory.
    unsafe { std::arch::asm!("int 0x80", inout("rax") ret, options(nostack)) };
    let ret = i32::try_from(ret).unwrap_or(-1);
    if ret < 0 { -ret } else { 0 }
}

/// A pid argument: a number, `ppid` (the supervisor under `enforcer run`)
/// or `self`.
fn pid_arg(text: &str) -> i32 {
    match text {
        // SAFETY: getppid/getpid have no arguments.
        "ppid" => unsafe { libc::getppid() },
        "self" => unsafe { libc::getpid() },
        _ => i32::try_from(number(text)).expect("pid"),
    }
}

/// `F_SETOWN` + `F_SETSIG(SIGKILL)` + `O_ASYNC` on a pipe's read end, then
/// a write to it: the kernel sends SIGKILL to `pid`, no `kill()` involved.
fn sigio_kill(pid: i32) -> i32 {
    const F_SETSIG: i32 = 10;
    let mut fds = [0; 2];
    // SAFETY: plain fcntl(2)/write(2) on a pipe of our own.
    unsafe {
        if libc::pipe(fds.as_mut_ptr()) != 0 {
            return errno();
        }
        let steps = [
            libc::fcntl(fds[0], libc::F_SETOWN, pid),
            libc::fcntl(fds[0], F_SETSIG, libc::SIGKILL),
            libc::fcntl(fds[0], libc::F_SETFL, libc::O_ASYNC | libc::O_NONBLOCK),
        ];
        let mut r = steps.iter().find(|&&r| r != 0).map_or(0, |_| errno());
        if r == 0 && libc::write(fds[1], b"x".as_ptr().cast(), 1) != 1 {
            r = errno();
        }
        close(fds[0]);
        close(fds[1]);
        r
    }
}

/// `clone3(CLONE_INTO_CGROUP)` into the cgroup directory `dir`; the child
/// exits at once.
fn clone_into_cgroup(dir: &str) -> i32 {
    let fd = match open(dir, libc::O_RDONLY | libc::O_DIRECTORY) {
        Ok(fd) => fd,
        Err(e) => return 1000 + e,
    };
    // struct clone_args: flags, pidfd, child_tid, parent_tid, exit_signal,
    // stack, stack_size, tls, set_tid, set_tid_size, cgroup.
    let mut args = [0u64; 11];
    args[0] = 0x2_0000_0000; // CLONE_INTO_CGROUP
    args[4] = libc::SIGCHLD as u64;
    args[10] = u64::try_from(fd).unwrap_or(0);
    // SAFETY: clone3 with a filled clone_args; the child only exits.
    let r = unsafe {
        let pid = libc::syscall(libc::SYS_clone3, args.as_ptr(), std::mem::size_of_val(&args));
        if pid == 0 {
            libc::_exit(0);
        }
        if pid > 0 {
            libc::waitpid(i32::try_from(pid).unwrap_or(-1), std::ptr::null_mut(), 0);
        }
        check(pid)
    };
    close(fd);
    r
}

/// `TIOCSTI` into a terminal of our own making (a new pty's far end).
fn tiocsti_pty() -> i32 {
    // SAFETY: posix_openpt and friends on descriptors of our own.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        if master < 0 {
            return 1000 + errno();
        }
        let mut name = [0 as libc::c_char; 64];
        if libc::grantpt(master) != 0
            || libc::unlockpt(master) != 0
            || libc::ptsname_r(master, name.as_mut_ptr(), name.len()) != 0
        {
            return 1000 + errno();
        }
        let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
        if slave < 0 {
            close(master);
            return 2000 + errno();
        }
        let r = check(libc::ioctl(slave, libc::TIOCSTI, b"x".as_ptr()).into());
        close(slave);
        close(master);
        r
    }
}

/// `chattr +i`: `FS_IOC_SETFLAGS` with the immutable flag.
fn chattr_immutable(path: &str) -> i32 {
    const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
    const FS_IMMUTABLE_FL: libc::c_long = 0x10;
    let fd = match open(path, libc::O_RDONLY) {
        Ok(fd) => fd,
        Err(e) => return 1000 + e,
    };
    let flags = FS_IMMUTABLE_FL;
    // SAFETY: the ioctl reads one long from a local.
    let r = check(unsafe { libc::ioctl(fd, FS_IOC_SETFLAGS, &raw const flags) }.into());
    close(fd);
    r
}

/// A detached copy of the mount at `path` (`open_tree(OPEN_TREE_CLONE)`),
/// then its root opened for reading through `/proc/self/fd`.
fn open_tree_read(path: &str) -> i32 {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    // SAFETY: open_tree with a NUL-terminated path.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c(path).as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    let Ok(fd) = i32::try_from(fd) else { return 1000 + errno() };
    if fd < 0 {
        return 1000 + errno();
    }
    let r = read(&format!("/proc/self/fd/{fd}"));
    close(fd);
    r
}

/// A new tmpfs as a detached mount (`fsopen`, `fsconfig`, `fsmount`), then a
/// file created on it.
fn fsmount_write() -> i32 {
    const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
    // SAFETY: the new mount API with NUL-terminated strings.
    unsafe {
        let fs = libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), 1);
        if fs < 0 {
            return 1000 + errno();
        }
        let fs = i32::try_from(fs).unwrap_or(-1);
        if libc::syscall(libc::SYS_fsconfig, fs, FSCONFIG_CMD_CREATE, std::ptr::null::<u8>(), std::ptr::null::<u8>(), 0)
            < 0
        {
            return 2000 + errno();
        }
        let mount = libc::syscall(libc::SYS_fsmount, fs, 1, 0);
        close(fs);
        if mount < 0 {
            return 3000 + errno();
        }
        let mount = i32::try_from(mount).unwrap_or(-1);
        let fd = libc::openat(mount, c"planted".as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
        let r = if fd < 0 { errno() } else { 0 };
        if fd >= 0 {
            close(fd);
        }
        close(mount);
        r
    }
}

/// A loose source route through 127.0.0.9 (IPv4 options: NOP, LSRR).
const LSRR: [u8; 8] = [1, 0x83, 7, 4, 127, 0, 0, 9];
#[expect(clippy::cast_possible_truncation, reason = "8 bytes")]
const LSRR_LEN: u32 = LSRR.len() as u32;

/// `setsockopt(IP_OPTIONS)` with a source route on a UDP socket.
fn ip_options() -> i32 {
    // SAFETY: socket/setsockopt/close with a local buffer.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        let r = check(libc::setsockopt(fd, libc::IPPROTO_IP, libc::IP_OPTIONS, LSRR.as_ptr().cast(), LSRR_LEN).into());
        close(fd);
        r
    }
}

/// `setsockopt(IPV6_RTHDR)`: a routing header (its contents are judged by
/// the kernel only after the enforcer).
fn ipv6_rthdr() -> i32 {
    let header = [0u8, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    // SAFETY: socket/setsockopt/close with a local buffer.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_DGRAM, 0);
        let r = check(libc::setsockopt(fd, libc::IPPROTO_IPV6, 57, header.as_ptr().cast(), 24).into());
        close(fd);
        r
    }
}

/// `sendmsg` to `to` with the source route as an `IP_RETOPTS` control message.
fn sendmsg_source_route(to: &str) -> i32 {
    let to: std::net::SocketAddrV4 = to.parse().expect("an IPv4 address:port");
    // SAFETY: sendmsg with a msghdr of local buffers, then close.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        let addr = libc::sockaddr_in {
            sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or_default(),
            sin_port: to.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(to.ip().octets()) },
            sin_zero: [0; 8],
        };
        let mut control = [0u64; 4];
        let cmsg = control.as_mut_ptr().cast::<libc::cmsghdr>();
        (*cmsg).cmsg_len = libc::CMSG_LEN(LSRR_LEN) as usize;
        (*cmsg).cmsg_level = libc::IPPROTO_IP;
        (*cmsg).cmsg_type = libc::IP_RETOPTS;
        std::ptr::copy_nonoverlapping(LSRR.as_ptr(), libc::CMSG_DATA(cmsg), LSRR.len());
        let mut payload = *b"ping";
        let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&raw const addr).cast_mut().cast();
        msg.msg_namelen = u32::try_from(size_of::<libc::sockaddr_in>()).unwrap_or(16);
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(LSRR_LEN) as usize;
        let r = check(libc::sendmsg(fd, &raw const msg, 0) as libc::c_long);
        close(fd);
        r
    }
}

/// How many BPF objects (programs, maps, links) this process holds a
/// descriptor of: an agent must never inherit one.
fn bpf_fds() -> i32 {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return -1 };
    let count = dir
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("anon_inode:bpf"))
        .count();
    i32::try_from(count).unwrap_or(i32::MAX)
}

/// Steps that act on another process or leave the agent; `None` if `op` is
/// not one.
fn boundary_step(op: &str, arg: &str) -> Option<i32> {
    // SAFETY: each call gets plain values or pointers to live locals.
    Some(unsafe {
        match op {
            // A one-second CPU limit: SIGKILL once the target used it up.
            "prlimit-cpu" => {
                let limit = libc::rlimit { rlim_cur: 1, rlim_max: 1 };
                check(libc::prlimit(pid_arg(arg), libc::RLIMIT_CPU, &raw const limit, std::ptr::null_mut()).into())
            }
            "prlimit-core" => {
                let limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                check(libc::prlimit(pid_arg(arg), libc::RLIMIT_CORE, &raw const limit, std::ptr::null_mut()).into())
            }
            "setpriority" => {
                check(libc::setpriority(libc::PRIO_PROCESS, u32::try_from(pid_arg(arg)).unwrap_or(0), 19).into())
            }
            "sched-idle" => {
                let param = libc::sched_param { sched_priority: 0 };
                check(libc::sched_setscheduler(pid_arg(arg), libc::SCHED_IDLE, &raw const param).into())
            }
            // IOPRIO_WHO_PROCESS, class idle.
            "ioprio-idle" => check(libc::syscall(libc::SYS_ioprio_set, 1, pid_arg(arg), 3 << 13)),
            "sigio-kill" => sigio_kill(pid_arg(arg)),
            "clone-into-cgroup" => clone_into_cgroup(arg),
            "tiocsti-pty" => tiocsti_pty(),
            "chattr" => chattr_immutable(arg),
            "bpf-fds" => bpf_fds(),
            "ip-options" => ip_options(),
            "ipv6-rthdr" => ipv6_rthdr(),
            "sendmsg-source-route" => sendmsg_source_route(arg),
            // 0 if this process leads its own session.
            "session-leader" => i32::from(libc::getsid(0) != libc::getpid()),
            // 0 if stdin is the terminal at `arg`, 1 if it is another one.
            "stdin-tty-is" => {
                let mut ours: libc::stat = std::mem::zeroed();
                let mut theirs: libc::stat = std::mem::zeroed();
                if libc::fstat(0, &raw mut ours) != 0 || libc::stat(c(arg).as_ptr(), &raw mut theirs) != 0 {
                    return Some(1000 + errno());
                }
                if libc::isatty(0) == 0 {
                    return Some(2000);
                }
                i32::from(ours.st_rdev != theirs.st_rdev)
            }
            "open-tree-read" => open_tree_read(arg),
            "fsmount-write" => fsmount_write(),
            // Opens without reading (a terminal would block a read).
            "open" => match open(arg, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY) {
                Ok(fd) => {
                    close(fd);
                    0
                }
                Err(e) => e,
            },
            _ => return None,
        }
    })
}

/// `bpf(cmd, attr, 128)` with a zeroed `attr`.
fn bpf_zeroed(cmd: i64) -> i32 {
    let attr = [0u8; 128];
    // SAFETY: `attr` is a live local of the size passed.
    check(unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), attr.len()) })
}

/// Syscall steps; `None` if `op` is not one.
fn syscall_step(op: &str, arg: &str) -> Option<i32> {
    // SAFETY: each call gets plain values or pointers to live locals.
    Some(unsafe {
        match op {
            "getpid" => check(libc::syscall(libc::SYS_getpid)),
            // KEYCTL_GET_KEYRING_ID of the session keyring, creating none.
            "keyctl" => check(libc::syscall(libc::SYS_keyctl, 0, -3, 0)),
            "unshare" => check(libc::unshare(i32::try_from(number(arg)).expect("flags")).into()),
            // BPF_PROG_LOAD of nothing: EINVAL when allowed, EPERM when denied.
            "bpf-prog-load" => bpf_zeroed(5),
            // A `bpf` command that does not exist (EINVAL when allowed): the
            // tests' marker that every earlier event of an agent was written.
            "bpf-cmd" => bpf_zeroed(number(arg)),
            "mount" => {
                check(libc::mount(c"none".as_ptr(), c(arg).as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()).into())
            }
            "ptrace-attach" => {
                let pid = i32::try_from(number(arg)).expect("pid");
                let r = libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0);
                if r == 0 {
                    libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
                }
                check(r)
            }
            // A raw syscall number with zero arguments.
            "syscall" => check(libc::syscall(number(arg))),
            #[cfg(target_arch = "x86_64")]
            "int80-getpid" => int80_getpid(),
            "exec" => exec(arg),
            // PID:SIGNAL
            "kill" => {
                let (pid, sig) = arg.split_once(':').expect("PID:SIGNAL");
                check(
                    libc::kill(i32::try_from(number(pid)).expect("pid"), i32::try_from(number(sig)).expect("signal"))
                        .into(),
                )
            }
            // A signal inside the agent: to a child of our own.
            "kill-child" => {
                let pid = libc::fork();
                if pid == 0 {
                    libc::pause();
                    libc::_exit(0);
                }
                let r = check(libc::kill(pid, libc::SIGKILL).into());
                libc::waitpid(pid, std::ptr::null_mut(), 0);
                r
            }
            // Root gives up its effective uid, then takes it back.
            "seteuid-back" => {
                if libc::seteuid(1000) != 0 {
                    return Some(1000 + errno());
                }
                check(libc::seteuid(0).into())
            }
            // A software clock counter on this process.
            "perf" => {
                let mut attr = [0u64; 16];
                attr[0] = 1 | (128 << 32); // type PERF_TYPE_SOFTWARE, size 128
                attr[1] = 0; // PERF_COUNT_SW_CPU_CLOCK
                let fd = libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0);
                if fd >= 0 {
                    close(i32::try_from(fd).unwrap_or(-1));
                }
                check(fd)
            }
            // A module image that is not one: EPERM if refused before it is read.
            "init-module" => {
                let image = [0u8; 64];
                check(libc::syscall(libc::SYS_init_module, image.as_ptr(), image.len(), c"".as_ptr()))
            }
            "memfd-exec" => memfd_exec(),
            _ => return None,
        }
    })
}

/// How many of `count` read-only opens of `path` succeeded.
fn opens_ok(count: &str, path: &str) -> i32 {
    let count: u32 = count.parse().expect("opens-ok:N:PATH");
    let ok = (0..count).filter(|_| open(path, libc::O_RDONLY).map(close).is_ok()).count();
    i32::try_from(ok).unwrap_or(i32::MAX)
}

/// Pins the probe to one CPU, so that another task pinned there shares it.
fn pin(cpu: &str) -> i32 {
    let cpu: usize = cpu.parse().expect("pin:CPU");
    // SAFETY: a zeroed cpu_set_t is an empty set; the calls get its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        check(libc::c_long::from(libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set)))
    }
}

fn step(op: &str, a: &str, b: &str) -> i32 {
    let (pa, pb) = (c(a), c(b));
    // SAFETY: each call gets NUL-terminated paths and plain values.
    unsafe {
        match op {
            // `opens-ok:N:PATH`: the count of successful opens, not an errno.
            "opens-ok" => opens_ok(a, b),
            "pin" => pin(a),
            "write" => open_write(a, libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND),
            "read" => read(a),
            // Writing an existing file (no O_CREAT: a create check comes first otherwise).
            "overwrite" => open_write(a, libc::O_WRONLY),
            "trunc-open" => match open(a, libc::O_RDONLY | libc::O_TRUNC) {
                Ok(fd) => {
                    close(fd);
                    0
                }
                Err(e) => e,
            },
            "mknod" => check(libc::mknod(pa.as_ptr(), libc::S_IFIFO | 0o644, 0).into()),
            "mkdir" => check(libc::mkdir(pa.as_ptr(), 0o755).into()),
            "rmdir" => check(libc::rmdir(pa.as_ptr()).into()),
            "unlink" => check(libc::unlink(pa.as_ptr()).into()),
            "rename" => check(libc::rename(pa.as_ptr(), pb.as_ptr()).into()),
            "link" => check(libc::link(pa.as_ptr(), pb.as_ptr()).into()),
            "symlink" => check(libc::symlink(pa.as_ptr(), pb.as_ptr()).into()),
            "truncate" => check(libc::truncate(pa.as_ptr(), 0).into()),
            "chmod" => check(libc::chmod(pa.as_ptr(), 0o600).into()),
            "chown" => check(libc::chown(pa.as_ptr(), 0, 0).into()),
            "utimes" => check(libc::utimes(pa.as_ptr(), std::ptr::null()).into()),
            "setxattr" => {
                check(libc::setxattr(pa.as_ptr(), c"trusted.enforcer".as_ptr(), b"1".as_ptr().cast(), 1, 0).into())
            }
            "removexattr" => check(libc::removexattr(pa.as_ptr(), c"trusted.enforcer".as_ptr()).into()),
            "reopen-write" => reopen_write(a),
            // A pipe's write end re-opened by path, as `echo > /dev/stdout` does.
            "pipe-reopen" => {
                let mut fds = [0; 2];
                if libc::pipe(fds.as_mut_ptr()) != 0 {
                    return errno();
                }
                let r = open_write(&format!("/proc/self/fd/{}", fds[1]), libc::O_WRONLY);
                close(fds[0]);
                close(fds[1]);
                r
            }
            "tmpfile-link" => tmpfile_link(a, b),
            // Blocks until a line arrives on stdin (the test moves us meanwhile).
            "wait-stdin" => {
                let mut line = String::new();
                let _ = std::io::stdin().lock().read_line(&mut line);
                0
            }
            // N opens for writing; returns the errno of the last.
            "storm" => {
                let mut last = 0;
                for _ in 0..b.parse::<u32>().unwrap_or(0) {
                    last = open_write(a, libc::O_WRONLY);
                }
                last
            }
            // Waits (up to 60 s) until `a` exists: another process's signal.
            "wait-file" => {
                let deadline = std::time::Instant::now() + std::time::Duration::from_mins(1);
                while !std::path::Path::new(a).exists() && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                if std::path::Path::new(a).exists() { 0 } else { libc::ETIMEDOUT }
            }
            "sleep-ms" => {
                std::thread::sleep(std::time::Duration::from_millis(a.parse().unwrap_or(0)));
                0
            }
            other => panic!("unknown probe op `{other}`"),
        }
    }
}

fn main() {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::json!({"ready": std::process::id()}));
    let _ = out.flush();
    for arg in std::env::args().skip(1) {
        let (op, rest) = arg.split_once(':').unwrap_or((&arg, ""));
        let errno = net_step(op, rest)
            .or_else(|| fast_open_step(op, rest))
            .or_else(|| kept_step(op, rest))
            .or_else(|| syscall_step(op, rest))
            .or_else(|| boundary_step(op, rest))
            .unwrap_or_else(|| {
                let (a, b) = rest.split_once(':').unwrap_or((rest, ""));
                step(op, a, b)
            });
        let _ = writeln!(out, "{}", serde_json::json!({"step": arg, "errno": errno}));
        let _ = out.flush();
    }
}
