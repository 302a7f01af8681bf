//! `enforcer-bench LOOP PATH ITERATIONS`: one timed syscall loop, for
//! `cargo xtask bench files` and `cargo xtask bench net`.
//!
//! Loops (each first runs a tenth of ITERATIONS untimed, to warm caches):
//! - `open`: `open(PATH, O_WRONLY)` of an existing file, then `close`;
//! - `open-read`: the same with `O_RDONLY`;
//! - `write`: `pwrite` of 64 bytes at offset 0 on an fd opened once;
//! - `stat`: `stat(PATH)`;
//! - `read`: `pread` of 64 bytes at offset 0 on an fd opened once;
//! - `connect` (PATH is `ADDRESS:PORT`): a TCP socket, `connect`, `close`
//!   (with `SO_LINGER` 0: a reset, so no `TIME_WAIT` socket is left to use
//!   up the ephemeral ports);
//! - `sendto` (PATH is `ADDRESS:PORT`): `sendto` of 64 bytes on an unbound,
//!   unconnected UDP socket made once;
//! - `upload` (PATH is `ADDRESS:PORT`): `write` of 64 KiB on a TCP
//!   connection made once, to a reader that discards (a bulk upload); a
//!   connection that cannot be made fails every write (`EBADF`).
//!
//! `enforcer-bench until-denied ADDRESS:PORT MAX` (for `cargo xtask bench
//! daemon`): prints `looping`, then connects (as `connect`) until one fails
//! with EPERM, at most MAX times, and prints `denied_at_ns=T attempts=N`
//! (`T`: `CLOCK_MONOTONIC` when the first EPERM came back; 0 if none did).
//!
//! `enforcer-bench listen ADDRESS:PORT 0` serves the `connect` loop (accepts
//! and closes, forever), binds UDP at port + 1 for `sendto`, and reads and
//! discards what each connection to port + 2 sends, for `upload`.
//!
//! Prints one line, `LOOP ns_per_op=N failures=F first_errno=E`, timed with
//! `CLOCK_MONOTONIC` (under qemu's `-icount` one guest ns is one
//! instruction) in ten batches: N is the median batch's. A failing `open`
//! keeps looping, so a denied run is timed and visibly denied
//! (`first_errno=1`: EPERM).

use std::ffi::CString;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

fn now_ns() -> u128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u128::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u128::try_from(ts.tv_nsec).unwrap_or(0)
}

/// A 64-byte buffer at a fixed alignment, so where ASLR puts the stack does
/// not change how many instructions the kernel's copy takes.
#[repr(C, align(64))]
struct Aligned<T>(T);

/// Failures of one loop: how many, and the errno of the first.
#[derive(Default)]
struct Failures {
    count: u64,
    first_errno: i32,
}

impl Failures {
    fn check(&mut self, ret: isize) {
        if ret < 0 {
            if self.count == 0 {
                self.first_errno = errno();
            }
            self.count += 1;
        }
    }
}

fn open(path: &CString, flags: i32) -> i32 {
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    if fd < 0 {
        eprintln!("enforcer-bench: cannot open {}: {}", path.to_string_lossy(), std::io::Error::last_os_error());
        std::process::exit(2);
    }
    fd
}

/// Runs `op` `n` times, counting failures.
fn repeat(n: u64, failures: &mut Failures, mut op: impl FnMut() -> isize) {
    for _ in 0..n {
        failures.check(op());
    }
}

/// Batches a timed loop is cut into.
const BATCHES: u64 = 10;

/// Runs `iterations` in `BATCHES` batches timed by `batch` (which runs `n` and returns
/// the nanoseconds they took); the median batch's ns per operation. Work the kernel
/// does now and then on the same CPU (a timer's deferred work, RCU callbacks) lands in
/// a batch or two and moves a whole-loop mean by up to 2% even under icount; the median
/// leaves it out.
fn median_batch(iterations: u64, mut batch: impl FnMut(u64) -> u128) -> f64 {
    let iterations = iterations.max(1);
    let batches = BATCHES.min(iterations);
    let size = iterations / batches;
    let mut per_op: Vec<f64> = (0..batches)
        .map(|i| {
            // The last batch also runs the remainder, so every iteration runs once.
            let n = if i + 1 == batches { size + iterations % batches } else { size };
            #[expect(clippy::cast_precision_loss, reason = "nanoseconds and counts far below 2^52")]
            let ns = batch(n) as f64 / n as f64;
            ns
        })
        .collect();
    per_op.sort_by(f64::total_cmp);
    let mid = per_op.len() / 2;
    if per_op.len().is_multiple_of(2) { f64::midpoint(per_op[mid - 1], per_op[mid]) } else { per_op[mid] }
}

/// A socket address for the network loops, as `sockaddr_in`.
fn sockaddr(text: &str) -> libc::sockaddr_in {
    let addr: std::net::SocketAddrV4 = text.parse().unwrap_or_else(|_| {
        eprintln!("enforcer-bench: `{text}` is not an IPv4 ADDRESS:PORT");
        std::process::exit(2);
    });
    libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or_default(),
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

#[expect(clippy::cast_possible_truncation, reason = "16 bytes")]
const SOCKADDR_IN_LEN: libc::socklen_t = size_of::<libc::sockaddr_in>() as libc::socklen_t;
#[expect(clippy::cast_possible_truncation, reason = "8 bytes")]
const LINGER_LEN: libc::socklen_t = size_of::<libc::linger>() as libc::socklen_t;

/// Where `listen` answers DNS (the `upload-tls` loop's name, `bench.test`, is
/// 127.0.0.1).
const BENCH_DNS: &str = "127.0.0.1:47010";

/// Accepts and closes TCP connections at `text`, and holds a UDP socket at
/// the next port (datagrams past its buffer are dropped), a reader that
/// discards what it gets at the one after, and a DNS server at
/// [`BENCH_DNS`], forever.
fn listen(text: &str) -> ! {
    let localhost = std::net::IpAddr::from([127, 0, 0, 1]);
    let _dns = enforcer_tests::DnsServer::start_at(BENCH_DNS, &[("bench.test", localhost, 3600)]);
    let tcp = std::net::TcpListener::bind(text).unwrap_or_else(|e| {
        eprintln!("enforcer-bench: cannot listen on {text}: {e}");
        std::process::exit(2);
    });
    let mut udp_addr = tcp.local_addr().expect("bound address");
    udp_addr.set_port(udp_addr.port() + 1);
    let _udp = std::net::UdpSocket::bind(udp_addr).expect("bind the UDP sink");
    let mut sink_addr = udp_addr;
    sink_addr.set_port(udp_addr.port() + 1);
    let sink = std::net::TcpListener::bind(sink_addr).expect("bind the upload sink");
    std::thread::spawn(move || {
        for mut connection in sink.incoming().flatten() {
            std::thread::spawn(move || std::io::copy(&mut connection, &mut std::io::sink()));
        }
    });
    loop {
        drop(tcp.accept());
    }
}

/// A connected TCP socket for the `upload` loop (-1 and errno if the connect failed).
fn connect_for_upload(to: &libc::sockaddr_in) -> i32 {
    // SAFETY: socket(2) and connect(2) with a sockaddr_in of its length.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if libc::connect(fd, std::ptr::from_ref(to).cast(), SOCKADDR_IN_LEN) < 0 {
            let e = errno();
            libc::close(fd);
            *libc::__errno_location() = e;
            return -1;
        }
        fd
    }
}

/// A TCP connection to `name:port` (resolved by the system's resolver, the
/// enforcer's when tagged) that opened with a TLS ClientHello naming
/// `name`, for the `upload-tls` loop: the uploads after it pass the TLS
/// name check of a policy that allows the name.
fn connect_named_for_upload(target: &str) -> i32 {
    use std::net::ToSocketAddrs as _;
    let (name, _) = target.rsplit_once(':').unwrap_or((target, ""));
    let Some(std::net::SocketAddr::V4(to)) =
        target.to_socket_addrs().ok().and_then(|mut a| a.find(std::net::SocketAddr::is_ipv4))
    else {
        eprintln!("enforcer-bench: upload-tls: cannot resolve {target}");
        return -1;
    };
    let fd = connect_for_upload(&sockaddr(&to.to_string()));
    let hello = enforcer_tests::client_hello(name);
    if fd >= 0 && upload_once(fd, &hello) < 0 {
        return -1;
    }
    fd
}

/// The connection the `upload` (to an address) or `upload-tls` (to a name)
/// loop writes to.
fn upload_connection(kind: &str, target: &str) -> i32 {
    let fd = if kind == "upload" { connect_for_upload(&sockaddr(target)) } else { connect_named_for_upload(target) };
    if fd < 0 {
        eprintln!("enforcer-bench: {kind}: cannot connect: {}", std::io::Error::last_os_error());
    }
    fd
}

/// One `write` of the `upload` loop: the whole 64 KiB (a short write
/// continues), or -1.
fn upload_once(fd: i32, chunk: &[u8]) -> isize {
    let mut sent = 0;
    while sent < chunk.len() {
        // SAFETY: writing from a slice of the buffer.
        let r = unsafe { libc::write(fd, chunk[sent..].as_ptr().cast(), chunk.len() - sent) };
        if r < 0 {
            return r;
        }
        sent += r.unsigned_abs();
    }
    isize::try_from(sent).unwrap_or(-1)
}

/// One `connect` of the `connect` loop; its return value.
fn connect_once(to: &libc::sockaddr_in) -> isize {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: socket(2), setsockopt(2) and connect(2) with structs of their
    // lengths, close(2).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, (&raw const linger).cast(), LINGER_LEN);
        let r = libc::connect(fd, std::ptr::from_ref(to).cast(), SOCKADDR_IN_LEN);
        libc::close(fd);
        r as isize
    }
}

/// Connects until the first EPERM; prints when it came and exits.
fn until_denied(address: &str, max: u64) -> ! {
    use std::io::Write as _;
    let to = sockaddr(address);
    println!("looping");
    let _ = std::io::stdout().flush();
    for attempt in 1..=max {
        if connect_once(&to) < 0 && errno() == libc::EPERM {
            println!("denied_at_ns={} attempts={attempt}", now_ns());
            std::process::exit(0);
        }
    }
    println!("denied_at_ns=0 attempts={max}");
    std::process::exit(1);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(kind), Some(path), Some(Ok(iterations))) =
        (args.get(1), args.get(2), args.get(3).map(|n| n.parse::<u64>()))
    else {
        eprintln!(
            "usage: enforcer-bench open|open-read|write|stat|read|connect|sendto|upload|upload-tls|listen|getpid|fork-exec|until-denied \
             PATH ITERATIONS"
        );
        std::process::exit(2);
    };
    let path = CString::new(path.as_str()).expect("path without NUL");
    let warmup = iterations / 10;
    let mut buf = Aligned([0x61u8; 64]);
    let mut failures = Failures::default();
    let mut timed = |op: &mut dyn FnMut() -> isize| {
        repeat(warmup, &mut Failures::default(), &mut *op);
        median_batch(iterations, |n| {
            let start = now_ns();
            repeat(n, &mut failures, &mut *op);
            now_ns() - start
        })
    };
    let elapsed = match kind.as_str() {
        "open" => timed(&mut || {
            // SAFETY: a NUL-terminated path; the fd is ours to close.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY) };
            if fd >= 0 {
                unsafe { libc::close(fd) };
            }
            fd as isize
        }),
        "open-read" => timed(&mut || {
            // SAFETY: as for `open`.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
            if fd >= 0 {
                unsafe { libc::close(fd) };
            }
            fd as isize
        }),
        "write" => {
            let fd = open(&path, libc::O_WRONLY);
            // SAFETY: 64 bytes from a local buffer of that size.
            timed(&mut || unsafe { libc::pwrite(fd, buf.0.as_ptr().cast(), buf.0.len(), 0) })
        }
        "stat" => {
            // SAFETY: an all-zero `struct stat` is valid; stat writes into it.
            let mut st: Aligned<libc::stat> = Aligned(unsafe { std::mem::zeroed() });
            timed(&mut || unsafe { libc::stat(path.as_ptr(), &raw mut st.0) as isize })
        }
        "read" => {
            let fd = open(&path, libc::O_RDONLY);
            // SAFETY: at most 64 bytes into a local buffer of that size.
            timed(&mut || unsafe { libc::pread(fd, buf.0.as_mut_ptr().cast(), buf.0.len(), 0) })
        }
        "listen" => listen(&path.to_string_lossy()),
        "until-denied" => until_denied(&path.to_string_lossy(), iterations),
        "connect" => {
            let to = sockaddr(&path.to_string_lossy());
            timed(&mut || connect_once(&to))
        }
        "sendto" => {
            let to = sockaddr(&path.to_string_lossy());
            // SAFETY: a UDP socket, kept for the whole loop.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
            // SAFETY: 64 bytes from a local buffer, to a sockaddr_in of its length.
            timed(&mut || unsafe {
                libc::sendto(fd, buf.0.as_ptr().cast(), buf.0.len(), 0, (&raw const to).cast(), SOCKADDR_IN_LEN)
            })
        }
        "upload" | "upload-tls" => {
            let fd = upload_connection(kind, &path.to_string_lossy());
            let chunk = vec![0x75u8; 64 * 1024];
            timed(&mut || upload_once(fd, &chunk))
        }
        // PATH is ignored: the raw syscall (libc may not cache, but be sure).
        "getpid" => timed(&mut || unsafe { libc::syscall(libc::SYS_getpid) }.try_into().unwrap_or(-1)),
        // fork, exec PATH (with no arguments), wait; fails if PATH does not exit 0.
        "fork-exec" => {
            let args = [path.as_ptr(), std::ptr::null()];
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            timed(&mut || {
                // SAFETY: the child only calls execve(2) and _exit(2).
                unsafe {
                    let pid = libc::fork();
                    if pid == 0 {
                        libc::execve(path.as_ptr(), args.as_ptr(), envp.as_ptr());
                        libc::_exit(127);
                    }
                    let mut status = 0;
                    libc::waitpid(pid, &raw mut status, 0);
                    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 { 0 } else { -1 }
                }
            })
        }
        other => {
            eprintln!(
                "enforcer-bench: unknown loop `{other}` (open, write, stat, read, connect, sendto, upload, \
                 upload-tls, listen, getpid, fork-exec, until-denied)"
            );
            std::process::exit(2);
        }
    };
    // `upload-tls` is the `upload` loop on another connection.
    let kind = kind.trim_end_matches("-tls");
    println!("{kind} ns_per_op={elapsed:.2} failures={} first_errno={}", failures.count, failures.first_errno);
}
