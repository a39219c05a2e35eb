//! How ranks in several processes (or nodes) get one NCCL unique id: rank 0 listens on
//! `--master ADDR:PORT`, every other rank connects and says who it is, and rank 0 answers
//! each with the 128-byte id once all have arrived. No CUDA is involved, so it is tested
//! on loopback without a GPU.
//!
//! ```text
//!   rank r -> rank 0:   "TESSERA-RV <rank> <world>\n"
//!   rank 0 -> rank r:   128 bytes of id          (after every rank 1..world arrived)
//! ```
//!
//! Rank 0 fails, naming the missing ranks, when one has not arrived by the deadline; a
//! rank fails when rank 0 cannot be reached or does not answer by its deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::error::CudaError;

/// Bytes of an NCCL unique id.
pub const ID_BYTES: usize = 128;

fn err(msg: String) -> CudaError {
    CudaError::Rendezvous(msg)
}

/// Rank 0: accepts ranks `1..world` on `listener` until `timeout`, then sends each `id`.
pub fn serve_id(
    listener: &TcpListener,
    world: usize,
    id: &[u8; ID_BYTES],
    timeout: Duration,
) -> Result<(), CudaError> {
    let deadline = Instant::now() + timeout;
    listener
        .set_nonblocking(true)
        .map_err(|e| err(format!("listener: {e}")))?;
    let mut arrived: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
    while arrived.iter().skip(1).any(Option::is_none) {
        if Instant::now() >= deadline {
            let missing: Vec<String> = (1..world)
                .filter(|&r| arrived[r].is_none())
                .map(|r| r.to_string())
                .collect();
            return Err(err(format!(
                "ranks {} did not arrive within {:?}",
                missing.join(", "),
                timeout
            )));
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                let (rank, stream) =
                    read_hello(stream, world, deadline).map_err(|e| err(format!("{peer}: {e}")))?;
                if arrived[rank].is_some() {
                    return Err(err(format!(
                        "rank {rank} arrived twice (second from {peer})"
                    )));
                }
                arrived[rank] = Some(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(err(format!("accept: {e}"))),
        }
    }
    for (rank, stream) in arrived.iter_mut().enumerate().skip(1) {
        if let Some(s) = stream {
            s.write_all(id)
                .map_err(|e| err(format!("sending the id to rank {rank}: {e}")))?;
        }
    }
    Ok(())
}

fn read_hello(
    stream: TcpStream,
    world: usize,
    deadline: Instant,
) -> Result<(usize, TcpStream), String> {
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(10));
    stream
        .set_read_timeout(Some(left))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    reader
        .read_line(&mut line)
        .map_err(|e| format!("reading its hello: {e}"))?;
    let parts: Vec<&str> = line.split_whitespace().collect();
    let (rank, their_world) = match parts.as_slice() {
        ["TESSERA-RV", r, w] => (
            r.parse::<usize>().map_err(|_| format!("bad rank {r:?}"))?,
            w.parse::<usize>().map_err(|_| format!("bad world {w:?}"))?,
        ),
        _ => return Err(format!("not a Tessera rank (said {:?})", line.trim())),
    };
    if their_world != world {
        return Err(format!(
            "rank {rank} expects {their_world} ranks, rank 0 expects {world}"
        ));
    }
    if rank == 0 || rank >= world {
        return Err(format!("rank {rank} is not in 1..{world}"));
    }
    Ok((rank, stream))
}

/// Rank `rank` (not 0): connects to rank 0 at `master` (retrying until `timeout`, since
/// rank 0 may start later) and returns the id it hands out.
pub fn fetch_id(
    master: SocketAddr,
    rank: usize,
    world: usize,
    timeout: Duration,
) -> Result<[u8; ID_BYTES], CudaError> {
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(err(format!(
                "rank 0 at {master} could not be reached within {timeout:?}"
            )));
        }
        match TcpStream::connect_timeout(&master, left.min(Duration::from_secs(1))) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    stream
        .write_all(format!("TESSERA-RV {rank} {world}\n").as_bytes())
        .map_err(|e| err(format!("hello to {master}: {e}")))?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(10));
    stream
        .set_read_timeout(Some(left))
        .map_err(|e| err(e.to_string()))?;
    let mut id = [0u8; ID_BYTES];
    stream.read_exact(&mut id).map_err(|e| {
        err(format!(
            "rank 0 at {master} sent no id within {timeout:?}: {e}"
        ))
    })?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (TcpListener, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let a = l.local_addr().expect("address");
        (l, a)
    }

    fn id() -> [u8; ID_BYTES] {
        std::array::from_fn(|i| (i * 7 + 3) as u8)
    }

    #[test]
    fn every_rank_gets_rank_zeros_id() {
        let (l, addr) = listener();
        let world = 4;
        let clients: Vec<_> = (1..world)
            .map(|r| std::thread::spawn(move || fetch_id(addr, r, world, Duration::from_secs(10))))
            .collect();
        serve_id(&l, world, &id(), Duration::from_secs(10)).expect("all arrive");
        for c in clients {
            assert_eq!(c.join().expect("thread").expect("id"), id());
        }
    }

    #[test]
    fn a_rank_that_never_arrives_is_named() {
        let (l, addr) = listener();
        let c = std::thread::spawn(move || fetch_id(addr, 1, 3, Duration::from_secs(5)));
        let e = serve_id(&l, 3, &id(), Duration::from_millis(300)).expect_err("rank 2 is missing");
        assert!(e.to_string().contains("ranks 2 did not arrive"), "{e}");
        drop(l);
        assert!(c.join().expect("thread").is_err(), "rank 1 gets no id");
    }

    #[test]
    fn a_rank_with_another_world_size_is_refused() {
        let (l, addr) = listener();
        let c = std::thread::spawn(move || fetch_id(addr, 1, 3, Duration::from_secs(5)));
        let e = serve_id(&l, 2, &id(), Duration::from_secs(5)).expect_err("world sizes differ");
        assert!(
            e.to_string().contains("expects 3 ranks, rank 0 expects 2"),
            "{e}"
        );
        let _ = c.join();
    }

    #[test]
    fn no_rank_zero_times_out() {
        let (l, addr) = listener();
        drop(l);
        let started = Instant::now();
        let e = fetch_id(addr, 1, 2, Duration::from_millis(300)).expect_err("nobody listens");
        assert!(e.to_string().contains("could not be reached"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
