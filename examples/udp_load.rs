//! UDP load generator and echo target for `tests/perf/udp_vs_nginx.sh`.
//!
//!   udp_load echo ADDR
//!       answers every datagram with itself (the "JVB")
//!   udp_load forward LISTEN TARGET
//!       the simplest relay, a latency floor for the benchmark: blocking sockets, a thread per
//!       client with its own socket to TARGET, one system call per datagram each way
//!   udp_load run TARGET RATE SECONDS [FLOWS] [SIZE]
//!       sends RATE datagrams/s for SECONDS from FLOWS sockets (default 16) of SIZE bytes
//!       (default 200, an RTP packet), each stamped with its send time, and prints one line:
//!       `sent=N received=N loss_pct=X p50_us=X p99_us=X` (the round trip through TARGET).
//!
//! Both sides batch their syscalls (sendmmsg/recvmmsg) but send every datagram on its own (no
//! GSO), so the proxy under test sees what many separate clients would send it.

use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BATCH: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("echo") if args.len() == 2 => echo(args[1].parse().expect("ADDR")),
        Some("forward") if args.len() == 3 => forward(
            args[1].parse().expect("LISTEN"),
            args[2].parse().expect("TARGET"),
        ),
        Some("run") if args.len() >= 4 => {
            let target: SocketAddr = args[1].parse().expect("TARGET");
            let rate: u64 = args[2].parse().expect("RATE");
            let seconds: u64 = args[3].parse().expect("SECONDS");
            let flows: usize = args.get(4).map_or(16, |f| f.parse().expect("FLOWS"));
            let size: usize = args.get(5).map_or(200, |s| s.parse().expect("SIZE"));
            run(target, rate, seconds, flows.max(1), size.max(16));
        }
        _ => {
            eprintln!(
                "usage: udp_load echo ADDR | udp_load forward LISTEN TARGET | udp_load run TARGET RATE SECONDS [FLOWS] [SIZE]"
            );
            std::process::exit(2);
        }
    }
}

/// Receives up to [`BATCH`] datagrams (waiting for the first), calling `each(data, from)`.
fn recv_batch(
    socket: &UdpSocket,
    bufs: &mut [Vec<u8>],
    mut each: impl FnMut(&[u8], SocketAddr),
) -> bool {
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(bufs.len(), None);
    let mut slices: Vec<[IoSliceMut<'_>; 1]> =
        bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
    let Ok(results) = recvmmsg(
        socket.as_raw_fd(),
        &mut headers,
        slices.iter_mut(),
        MsgFlags::MSG_WAITFORONE,
        None,
    ) else {
        return false;
    };
    let got: Vec<(usize, Option<SocketAddr>)> = results
        .map(|r| {
            let from = r.address.and_then(|a| {
                a.as_sockaddr_in()
                    .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                    .or_else(|| {
                        a.as_sockaddr_in6()
                            .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                    })
            });
            (r.bytes, from)
        })
        .collect();
    for (i, (n, from)) in got.into_iter().enumerate() {
        if let Some(from) = from {
            each(&bufs[i][..n], from);
        }
    }
    true
}

fn echo(addr: SocketAddr) {
    let socket = UdpSocket::bind(addr).expect("bind");
    let mut bufs = vec![vec![0u8; 2048]; BATCH];
    loop {
        let mut out: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(BATCH);
        recv_batch(&socket, &mut bufs, |data, from| {
            out.push((data.to_vec(), from))
        });
        if out.is_empty() {
            continue;
        }
        let addrs: Vec<Option<SockaddrStorage>> = out
            .iter()
            .map(|(_, a)| Some(SockaddrStorage::from(*a)))
            .collect();
        let slices: Vec<[std::io::IoSlice<'_>; 1]> = out
            .iter()
            .map(|(d, _)| [std::io::IoSlice::new(d)])
            .collect();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(slices.len(), None);
        let _ = sendmmsg(
            socket.as_raw_fd(),
            &mut headers,
            &slices,
            &addrs,
            [],
            MsgFlags::MSG_DONTWAIT,
        );
    }
}

fn forward(listen: SocketAddr, target: SocketAddr) {
    let public = Arc::new(UdpSocket::bind(listen).expect("bind"));
    let mut upstream: std::collections::HashMap<SocketAddr, UdpSocket> = Default::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = public.recv_from(&mut buf) else {
            continue;
        };
        let socket = upstream.entry(client).or_insert_with(|| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.connect(target).expect("connect");
            let (back, public) = (s.try_clone().expect("clone"), public.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = back.recv(&mut buf) {
                    let _ = public.send_to(&buf[..n], client);
                }
            });
            s
        });
        let _ = socket.send(&buf[..n]);
    }
}

fn run(target: SocketAddr, rate: u64, seconds: u64, flows: usize, size: usize) {
    let start = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity((rate * seconds) as usize)));
    let done = Arc::new(AtomicBool::new(false));
    let mut sockets = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..flows {
        let s = Arc::new(UdpSocket::bind("127.0.0.1:0").expect("bind"));
        s.connect(target).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let (r, l, d, s2) = (received.clone(), latencies.clone(), done.clone(), s.clone());
        receivers.push(std::thread::spawn(move || {
            let mut bufs = vec![vec![0u8; 2048]; BATCH];
            let mut local = Vec::new();
            while !d.load(Ordering::Relaxed) {
                recv_batch(&s2, &mut bufs, |data, _| {
                    if data.len() >= 16 {
                        let sent_ns = u64::from_le_bytes(data[8..16].try_into().unwrap());
                        let now_ns = start.elapsed().as_nanos() as u64;
                        local.push((now_ns.saturating_sub(sent_ns) / 1000) as u32);
                    }
                });
                if local.len() >= 4096 {
                    r.fetch_add(local.len() as u64, Ordering::Relaxed);
                    l.lock().unwrap().append(&mut local);
                }
            }
            r.fetch_add(local.len() as u64, Ordering::Relaxed);
            l.lock().unwrap().append(&mut local);
        }));
        sockets.push(s);
    }
    // Pace in 1 ms steps: send what the rate owes by now, spread over the flows.
    let total = rate * seconds;
    let mut sent: u64 = 0;
    let mut payloads = vec![vec![0u8; size]; BATCH];
    let mut next_flow = 0usize;
    while sent < total {
        let owed = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < owed {
            let n = ((owed - sent) as usize).min(BATCH);
            let now_ns = start.elapsed().as_nanos() as u64;
            for (i, p) in payloads.iter_mut().take(n).enumerate() {
                p[..8].copy_from_slice(&(sent + i as u64).to_le_bytes());
                p[8..16].copy_from_slice(&now_ns.to_le_bytes());
            }
            let slices: Vec<[std::io::IoSlice<'_>; 1]> = payloads[..n]
                .iter()
                .map(|p| [std::io::IoSlice::new(p)])
                .collect();
            let addrs: Vec<Option<SockaddrStorage>> = vec![None; n];
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(n, None);
            let s = &sockets[next_flow % flows];
            next_flow += 1;
            // A full send buffer counts as loss, not as back-pressure on the offered rate.
            let _ = sendmmsg(
                s.as_raw_fd(),
                &mut headers,
                &slices,
                &addrs,
                [],
                MsgFlags::MSG_DONTWAIT,
            );
            sent += n as u64;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::Relaxed);
    for r in receivers {
        let _ = r.join();
    }
    let got = received.load(Ordering::Relaxed);
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort_unstable();
    let pct = |p: f64| -> u32 {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)]
        }
    };
    let loss = 100.0 * total.saturating_sub(got) as f64 / total.max(1) as f64;
    println!(
        "sent={total} received={got} loss_pct={loss:.3} p50_us={} p99_us={}",
        pct(0.50),
        pct(0.99)
    );
}
