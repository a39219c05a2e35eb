//! Ranks in several processes (nodes): the first node runs the engine and some ranks; each
//! other node runs the rest of the ranks and follows the first over TCP.
//!
//! ```text
//!   node r rank k -> node 0:  Hello { rank, world, plan digest, device }
//!   node 0 -> node r rank k:  Welcome { group token }   (after every remote rank arrived)
//!   node 0 -> rank k:         Setup { KV blocks, block size }   -> Loaded | Failed
//!   node 0 -> rank k:         Step [sequences]                  -> Done | Failed   (each step)
//! ```
//!
//! Frames are a 4-byte little-endian length and that many bytes of JSON. The group token
//! is what the ranks need to meet (NCCL's unique id for CUDA ranks). Ranks are spread over
//! the nodes as evenly as they go ([`node_ranks`]); a follower exits when the first node
//! closes its connections.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tessera_comm::CommStats;
use tessera_model::worker::{RankLoader, RankSetup, RankStarter, RankWorker};
use tessera_model::{KvDtype, ModelConfig, ModelError, StepSeq, WeightDtype};
use tessera_plan::{ReduceMode, ShardPlan};

/// Largest frame accepted (a step of many long prompts fits easily).
const MAX_FRAME: usize = 256 << 20;

/// The global ranks node `node` of `nodes` runs out of `world`: contiguous, the first
/// `world % nodes` nodes one more.
pub fn node_ranks(world: usize, nodes: usize, node: usize) -> Range<usize> {
    let nodes = nodes.max(1);
    let (base, extra) = (world / nodes, world % nodes);
    let start = node * base + node.min(extra);
    start..start + base + usize::from(node < extra)
}

/// A short digest of a plan, so that every node checks it runs the same one.
pub fn plan_digest(plan: &ShardPlan) -> u64 {
    // FNV-1a over the plan's JSON.
    plan.to_json().bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[derive(Serialize, Deserialize, Debug)]
struct Hello {
    rank: usize,
    world: usize,
    plan: u64,
    device: String,
}

#[derive(Serialize, Deserialize, Debug)]
enum Welcome {
    Token(Vec<u8>),
    Refused(String),
}

/// What node 0 sends a rank: the sequences of a step are sent borrowed
/// (`&[StepSeq]`) and arrive owned (`Vec<StepSeq>`).
#[derive(Serialize, Deserialize, Debug)]
enum ToRank<S> {
    Setup {
        num_blocks: usize,
        block_size: usize,
        kv_dtype: Option<KvDtype>,
    },
    Step(S),
}

/// A frame as a rank reads it.
type ToRankOwned = ToRank<Vec<StepSeq>>;

#[derive(Serialize, Deserialize, Debug)]
enum FromRank {
    Loaded {
        weight_bytes: usize,
    },
    Done {
        calls: u64,
        bytes_moved: u64,
        seconds: f64,
    },
    Failed(String),
}

fn node_err(message: String) -> ModelError {
    ModelError::Device {
        backend: "nodes",
        message,
    }
}

fn send<T: Serialize>(stream: &mut TcpStream, value: &T) -> Result<(), ModelError> {
    let body = serde_json::to_vec(value).map_err(|e| node_err(format!("encoding: {e}")))?;
    let len = u32::try_from(body.len()).map_err(|_| node_err("frame too large".into()))?;
    stream
        .write_all(&len.to_le_bytes())
        .and_then(|()| stream.write_all(&body))
        .and_then(|()| stream.flush())
        .map_err(|e| node_err(format!("sending to {}: {e}", peer(stream))))
}

/// Reads one frame; `Ok(None)` when the peer closed the connection before it.
fn recv<T: for<'de> Deserialize<'de>>(stream: &mut TcpStream) -> Result<Option<T>, ModelError> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(node_err(format!("reading from {}: {e}", peer(stream)))),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(node_err(format!(
            "{} sent a frame of {len} bytes (over {MAX_FRAME}); not a Tessera node?",
            peer(stream)
        )));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .map_err(|e| node_err(format!("reading from {}: {e}", peer(stream))))?;
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| node_err(format!("{} sent a malformed frame: {e}", peer(stream))))
}

fn peer(stream: &TcpStream) -> String {
    stream
        .peer_addr()
        .map_or_else(|_| "a node".into(), |a| a.to_string())
}

/// The first node's loader: its own ranks from `inner`, the others through connections
/// from the following nodes, accepted on `listen`.
pub struct NodeLoader {
    /// The loader of this node's ranks (and of the group token).
    pub inner: Box<dyn RankLoader>,
    /// Nodes in all.
    pub nodes: usize,
    /// Where the following nodes connect (`--master`).
    pub listen: SocketAddr,
    /// [`plan_digest`] of the plan every node must run.
    pub plan: u64,
    /// How long to wait for every following rank.
    pub timeout: Duration,
}

impl RankLoader for NodeLoader {
    fn device(&self) -> &'static str {
        self.inner.device()
    }

    fn starters(
        &self,
        world: usize,
        ranks: Range<usize>,
        token: &[u8],
    ) -> Result<Vec<Box<dyn RankStarter>>, ModelError> {
        self.inner.starters(world, ranks, token)
    }

    fn prepare(&self, world: usize) -> Result<Vec<Box<dyn RankStarter>>, ModelError> {
        if self.nodes > world {
            return Err(node_err(format!(
                "{} nodes for {world} ranks: every node needs at least one rank",
                self.nodes
            )));
        }
        let local = node_ranks(world, self.nodes, 0);
        let token = self.inner.group_token(world)?;
        let listener = TcpListener::bind(self.listen)
            .map_err(|e| node_err(format!("listening on {}: {e}", self.listen)))?;
        tracing::info!(listen = %self.listen, nodes = self.nodes, world, "waiting for the other nodes' ranks");
        let mut remote = accept_ranks(&listener, world, local.end, self, &token)?;
        let mut starters = self.inner.starters(world, local, &token)?;
        for (rank, stream) in remote.drain(..) {
            starters.push(Box::new(RemoteStarter { rank, stream }));
        }
        Ok(starters)
    }
}

/// Accepts ranks `first..world` (each once, with the right world, plan and device) and
/// answers each with `token`; fails naming the missing ranks at the deadline.
fn accept_ranks(
    listener: &TcpListener,
    world: usize,
    first: usize,
    loader: &NodeLoader,
    token: &[u8],
) -> Result<Vec<(usize, TcpStream)>, ModelError> {
    let deadline = Instant::now() + loader.timeout;
    listener
        .set_nonblocking(true)
        .map_err(|e| node_err(format!("listener: {e}")))?;
    let mut arrived: Vec<Option<TcpStream>> = (first..world).map(|_| None).collect();
    while arrived.iter().any(Option::is_none) {
        if Instant::now() >= deadline {
            let missing: Vec<String> = arrived
                .iter()
                .enumerate()
                .filter(|(_, s)| s.is_none())
                .map(|(i, _)| (first + i).to_string())
                .collect();
            return Err(node_err(format!(
                "ranks {} did not arrive within {:?} (start the other nodes with --node-rank and --master {})",
                missing.join(", "),
                loader.timeout,
                loader.listen
            )));
        }
        let (mut stream, addr) = match listener.accept() {
            Ok(v) => v,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(node_err(format!("accepting: {e}"))),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(100))));
        let hello: Hello = match recv(&mut stream)? {
            Some(h) => h,
            None => continue,
        };
        let refusal = if hello.world != world {
            Some(format!("it runs {} ranks, this node {world}", hello.world))
        } else if hello.plan != loader.plan {
            Some("its plan differs from this node's (same --model, --tp/--plan, --strategy on every node)".to_string())
        } else if hello.device != loader.inner.device() {
            Some(format!(
                "it runs on {}, this node on {}",
                hello.device,
                loader.inner.device()
            ))
        } else if !(first..world).contains(&hello.rank) {
            Some(format!(
                "rank {} is not one of the following nodes' ranks {first}..{world}",
                hello.rank
            ))
        } else if arrived[hello.rank - first].is_some() {
            Some(format!("rank {} arrived twice", hello.rank))
        } else {
            None
        };
        if let Some(why) = refusal {
            let _ = send(&mut stream, &Welcome::Refused(why.clone()));
            return Err(node_err(format!("{addr} (rank {}): {why}", hello.rank)));
        }
        send(&mut stream, &Welcome::Token(token.to_vec()))?;
        let _ = stream.set_read_timeout(None);
        let _ = stream.set_nodelay(true);
        tracing::info!(rank = hello.rank, %addr, "rank arrived");
        arrived[hello.rank - first] = Some(stream);
    }
    Ok(arrived
        .into_iter()
        .enumerate()
        .filter_map(|(i, s)| s.map(|s| (first + i, s)))
        .collect())
}

/// A rank on another node, as the first node's coordinator sees it.
struct RemoteStarter {
    rank: usize,
    stream: TcpStream,
}

impl RankStarter for RemoteStarter {
    fn start(mut self: Box<Self>, setup: &RankSetup) -> Result<Box<dyn RankWorker>, ModelError> {
        send(
            &mut self.stream,
            &ToRank::<&[StepSeq]>::Setup {
                num_blocks: setup.num_blocks,
                block_size: setup.block_size,
                kv_dtype: setup.kv_dtype,
            },
        )?;
        match recv(&mut self.stream)? {
            Some(FromRank::Loaded { weight_bytes }) => Ok(Box::new(RemoteWorker {
                rank: self.rank,
                stream: self.stream,
                weight_bytes,
            })),
            Some(FromRank::Failed(why)) => Err(node_err(format!("rank {}: {why}", self.rank))),
            other => Err(node_err(format!(
                "rank {}: expected Loaded, got {other:?}",
                self.rank
            ))),
        }
    }
}

struct RemoteWorker {
    rank: usize,
    stream: TcpStream,
    weight_bytes: usize,
}

impl RankWorker for RemoteWorker {
    fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    fn step(&mut self, seqs: &[StepSeq]) -> Result<(Vec<f32>, CommStats), ModelError> {
        send(&mut self.stream, &ToRank::Step(seqs))?;
        match recv(&mut self.stream)? {
            Some(FromRank::Done {
                calls,
                bytes_moved,
                seconds,
            }) => Ok((
                Vec::new(),
                CommStats {
                    calls,
                    bytes_moved,
                    time: Duration::from_secs_f64(seconds.max(0.0)),
                },
            )),
            Some(FromRank::Failed(why)) => Err(node_err(format!("rank {}: {why}", self.rank))),
            None => Err(node_err(format!(
                "rank {} closed its connection",
                self.rank
            ))),
            Some(other) => Err(node_err(format!(
                "rank {}: expected Done, got {other:?}",
                self.rank
            ))),
        }
    }
}

/// What a following node runs: its ranks of the plan, driven by the first node.
#[derive(Clone, Debug)]
pub struct Follower {
    /// The first node's address (`--master`).
    pub master: SocketAddr,
    /// Nodes in all.
    pub nodes: usize,
    /// This node's index (1..nodes).
    pub node: usize,
    /// The model directory on this node.
    pub dir: PathBuf,
    /// The model's config.
    pub config: ModelConfig,
    /// The plan every node runs.
    pub plan: Arc<ShardPlan>,
    /// Weight precision.
    pub dtype: WeightDtype,
    /// Reduction mode.
    pub reduce: ReduceMode,
    /// CPU threads for this node's ranks (default: every core).
    pub threads: Option<usize>,
    /// How long to keep trying to reach the first node.
    pub timeout: Duration,
}

/// Runs this node's ranks until the first node closes their connections.
pub fn follow(f: &Follower, loader: &dyn RankLoader) -> Result<(), ModelError> {
    let world = f.plan.world_size;
    if f.node == 0 || f.node >= f.nodes || f.nodes > world {
        return Err(node_err(format!(
            "node {} of {} cannot follow with {world} ranks (--node-rank 1..{} follows node 0)",
            f.node, f.nodes, f.nodes
        )));
    }
    let ranks = node_ranks(world, f.nodes, f.node);
    let digest = plan_digest(&f.plan);
    let deadline = Instant::now() + f.timeout;
    let mut streams = Vec::with_capacity(ranks.len());
    let mut token = None;
    for rank in ranks.clone() {
        let mut stream = connect(f.master, deadline)?;
        send(
            &mut stream,
            &Hello {
                rank,
                world,
                plan: digest,
                device: loader.device().to_string(),
            },
        )?;
        match recv(&mut stream)? {
            Some(Welcome::Token(t)) => token = Some(t),
            Some(Welcome::Refused(why)) => {
                return Err(node_err(format!("node 0 refused rank {rank}: {why}")))
            }
            None => {
                return Err(node_err(format!(
                    "node 0 closed the connection of rank {rank}"
                )))
            }
        }
        let _ = stream.set_nodelay(true);
        streams.push((rank, stream));
    }
    let token = token.unwrap_or_default();
    let starters = loader.starters(world, ranks.clone(), &token)?;
    let threads = crate::coordinator::threads_per_rank(f.threads, ranks.len());
    tracing::info!(node = f.node, ?ranks, master = %f.master, "following");
    let handles: Vec<_> = streams
        .into_iter()
        .zip(starters)
        .map(|((rank, stream), starter)| {
            let base = RankSetup {
                rank,
                dir: f.dir.clone(),
                config: f.config.clone(),
                plan: Arc::clone(&f.plan),
                dtype: f.dtype,
                reduce: f.reduce,
                threads,
                num_blocks: 0,
                block_size: 0,
                kv_dtype: None,
            };
            std::thread::Builder::new()
                .name(format!("tessera-rank-{rank}"))
                .spawn(move || serve_rank(stream, starter, base))
        })
        .collect();
    let mut first_err = None;
    for h in handles {
        let result = h
            .map_err(|e| node_err(format!("spawning a rank thread: {e}")))
            .and_then(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(node_err("a rank thread panicked".into())))
            });
        if let Err(e) = result {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Connects to the first node, retrying until the deadline (it may start later).
fn connect(master: SocketAddr, deadline: Instant) -> Result<TcpStream, ModelError> {
    loop {
        match TcpStream::connect_timeout(&master, Duration::from_secs(2)) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(node_err(format!("cannot reach node 0 at {master}: {e}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// One following rank: set-up, then steps until the first node hangs up.
fn serve_rank(
    mut stream: TcpStream,
    starter: Box<dyn RankStarter>,
    mut setup: RankSetup,
) -> Result<(), ModelError> {
    let Some(ToRankOwned::Setup {
        num_blocks,
        block_size,
        kv_dtype,
    }) = recv(&mut stream)?
    else {
        return Err(node_err(format!(
            "rank {}: node 0 sent no set-up",
            setup.rank
        )));
    };
    setup.num_blocks = num_blocks;
    setup.block_size = block_size;
    setup.kv_dtype = kv_dtype;
    let mut worker = match starter.start(&setup) {
        Ok(w) => w,
        Err(e) => {
            let _ = send(&mut stream, &FromRank::Failed(e.to_string()));
            return Err(e);
        }
    };
    send(
        &mut stream,
        &FromRank::Loaded {
            weight_bytes: worker.weight_bytes(),
        },
    )?;
    tracing::info!(rank = setup.rank, "rank loaded");
    while let Some(msg) = recv::<ToRankOwned>(&mut stream)? {
        let ToRankOwned::Step(seqs) = msg else {
            return Err(node_err(format!("rank {}: a second set-up", setup.rank)));
        };
        match worker.step(&seqs) {
            Ok((_, stats)) => send(
                &mut stream,
                &FromRank::Done {
                    calls: stats.calls,
                    bytes_moved: stats.bytes_moved,
                    seconds: stats.time.as_secs_f64(),
                },
            )?,
            Err(e) => {
                let _ = send(&mut stream, &FromRank::Failed(e.to_string()));
                return Err(e);
            }
        }
    }
    tracing::info!(rank = setup.rank, "node 0 closed the connection; rank done");
    Ok(())
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
