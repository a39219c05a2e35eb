//! Tests of multi-node rank serving over TCP.

use std::sync::atomic::{AtomicUsize, Ordering};

use tessera_model::LogitRows;
use tessera_plan::Strategy;

use super::*;

/// Ranks that load nothing: a step counts itself and returns `[rank]` as "logits".
struct Fake {
    steps: Arc<AtomicUsize>,
}

struct FakeStarter {
    rank: usize,
    steps: Arc<AtomicUsize>,
}

struct FakeWorker {
    rank: usize,
    steps: Arc<AtomicUsize>,
}

impl RankLoader for Fake {
    fn device(&self) -> &'static str {
        "fake"
    }

    fn group_token(&self, world: usize) -> Result<Vec<u8>, ModelError> {
        Ok(vec![7; world])
    }

    fn starters(
        &self,
        world: usize,
        ranks: Range<usize>,
        token: &[u8],
    ) -> Result<Vec<Box<dyn RankStarter>>, ModelError> {
        assert_eq!(
            token,
            vec![7; world],
            "every rank gets the first node's token"
        );
        Ok(ranks
            .map(|rank| {
                Box::new(FakeStarter {
                    rank,
                    steps: Arc::clone(&self.steps),
                }) as Box<dyn RankStarter>
            })
            .collect())
    }
}

impl RankStarter for FakeStarter {
    fn start(self: Box<Self>, setup: &RankSetup) -> Result<Box<dyn RankWorker>, ModelError> {
        assert_eq!(setup.rank, self.rank);
        assert_eq!((setup.num_blocks, setup.block_size), (40, 16));
        Ok(Box::new(FakeWorker {
            rank: self.rank,
            steps: self.steps,
        }))
    }
}

impl RankWorker for FakeWorker {
    fn weight_bytes(&self) -> usize {
        1000 + self.rank
    }

    fn step(&mut self, seqs: &[StepSeq]) -> Result<(Vec<f32>, CommStats), ModelError> {
        if seqs.iter().any(|s| s.tokens.contains(&666)) {
            return Err(node_err(format!("rank {} refuses token 666", self.rank)));
        }
        self.steps.fetch_add(1, Ordering::SeqCst);
        Ok((vec![self.rank as f32], CommStats::default()))
    }
}

fn config() -> ModelConfig {
    let text = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 64,
        "intermediate_size": 96, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 1, "rms_norm_eps": 1e-5, "vocab_size": 100,
        "max_position_embeddings": 128}"#;
    ModelConfig::parse(text, std::path::Path::new("config.json")).unwrap()
}

fn setup(rank: usize, plan: &Arc<ShardPlan>) -> RankSetup {
    RankSetup {
        rank,
        dir: PathBuf::from("/nonexistent"),
        config: config(),
        plan: Arc::clone(plan),
        dtype: WeightDtype::F32,
        reduce: ReduceMode::Deterministic,
        threads: 1,
        num_blocks: 40,
        block_size: 16,
        kv_dtype: None,
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn follower(master: SocketAddr, plan: &Arc<ShardPlan>, node: usize) -> Follower {
    Follower {
        master,
        nodes: 2,
        node,
        dir: PathBuf::from("/nonexistent"),
        config: config(),
        plan: Arc::clone(plan),
        dtype: WeightDtype::F32,
        reduce: ReduceMode::Deterministic,
        threads: Some(1),
        timeout: Duration::from_secs(20),
    }
}

fn plan(world: usize, strategy: Strategy) -> Arc<ShardPlan> {
    Arc::new(strategy.plan(&config().shape, world).unwrap())
}

/// Node 1 following on its own thread with `follower_plan`, and node 0's loader for
/// `plan`; both count steps in `steps`.
fn two_nodes(
    plan: &Arc<ShardPlan>,
    follower_plan: &Arc<ShardPlan>,
    steps: &Arc<AtomicUsize>,
) -> (std::thread::JoinHandle<Result<(), ModelError>>, NodeLoader) {
    let addr = free_addr();
    let f = follower(addr, follower_plan, 1);
    let remote_steps = Arc::clone(steps);
    let handle = std::thread::spawn(move || {
        follow(
            &f,
            &Fake {
                steps: remote_steps,
            },
        )
    });
    let loader = NodeLoader {
        inner: Box::new(Fake {
            steps: Arc::clone(steps),
        }),
        nodes: 2,
        listen: addr,
        plan: plan_digest(plan),
        timeout: Duration::from_secs(20),
    };
    (handle, loader)
}

#[test]
fn ranks_cover_the_world_once_and_spread_evenly() {
    for world in 1..=9 {
        for nodes in 1..=world {
            let spans: Vec<Range<usize>> =
                (0..nodes).map(|n| node_ranks(world, nodes, n)).collect();
            assert_eq!(spans[0].start, 0);
            assert_eq!(spans[nodes - 1].end, world);
            for w in spans.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
            let lens: Vec<usize> = spans.iter().map(ExactSizeIterator::len).collect();
            let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
            assert!(*lo >= 1 && hi - lo <= 1, "{world} over {nodes}: {lens:?}");
        }
    }
}

#[test]
fn steps_reach_the_following_node_and_it_exits_when_the_first_closes() {
    let plan = plan(3, Strategy::Megatron);
    let steps = Arc::new(AtomicUsize::new(0));
    let (follower, loader) = two_nodes(&plan, &plan, &steps);
    // 3 ranks over 2 nodes: ranks 0 and 1 here, rank 2 there.
    let starters = loader.prepare(3).unwrap();
    assert_eq!(starters.len(), 3);
    let mut workers: Vec<Box<dyn RankWorker>> = starters
        .into_iter()
        .enumerate()
        .map(|(rank, s)| s.start(&setup(rank, &plan)).unwrap())
        .collect();
    assert_eq!(
        workers[2].weight_bytes(),
        1002,
        "reported by the remote rank"
    );
    let table = [0u32, 1];
    let tokens = [5u32, 6, 7];
    let seqs = [StepSeq {
        id: 0,
        tokens: tokens.to_vec(),
        start: 0,
        block_table: table.to_vec(),
        logits: LogitRows::Last,
    }];
    for _ in 0..4 {
        for w in &mut workers {
            w.step(&seqs).unwrap();
        }
    }
    assert_eq!(steps.load(Ordering::SeqCst), 12, "4 steps on 3 ranks");
    drop(workers);
    follower.join().unwrap().unwrap();
}

#[test]
fn a_failing_remote_step_is_an_error_naming_the_rank_on_both_nodes() {
    let plan = plan(2, Strategy::Megatron);
    let steps = Arc::new(AtomicUsize::new(0));
    let (follower, loader) = two_nodes(&plan, &plan, &steps);
    let mut starters = loader.prepare(2).unwrap();
    let remote = starters.pop().unwrap();
    let mut worker = remote.start(&setup(1, &plan)).unwrap();
    let (bad, table) = ([666u32], [0u32]);
    let seqs = [StepSeq {
        id: 0,
        tokens: bad.to_vec(),
        start: 0,
        block_table: table.to_vec(),
        logits: LogitRows::Last,
    }];
    let err = worker.step(&seqs).unwrap_err().to_string();
    assert!(err.contains("rank 1 refuses token 666"), "{err}");
    let err = follower.join().unwrap().unwrap_err().to_string();
    assert!(err.contains("refuses token 666"), "{err}");
}

#[test]
fn a_follower_with_another_plan_is_refused_with_the_reason() {
    let plan_a = plan(2, Strategy::Megatron);
    let plan_b = plan(2, Strategy::Replicated);
    let steps = Arc::new(AtomicUsize::new(0));
    let (follower, loader) = two_nodes(&plan_a, &plan_b, &steps);
    let err = loader.prepare(2).err().unwrap().to_string();
    assert!(err.contains("plan differs"), "{err}");
    let err = follower.join().unwrap().unwrap_err().to_string();
    assert!(
        err.contains("refused rank 1") && err.contains("plan differs"),
        "{err}"
    );
}

#[test]
fn missing_ranks_are_named_at_the_deadline() {
    let plan = plan(4, Strategy::Megatron);
    let loader = NodeLoader {
        inner: Box::new(Fake {
            steps: Arc::new(AtomicUsize::new(0)),
        }),
        nodes: 2,
        listen: free_addr(),
        plan: plan_digest(&plan),
        timeout: Duration::from_millis(300),
    };
    let err = loader.prepare(4).err().unwrap().to_string();
    assert!(err.contains("ranks 2, 3 did not arrive"), "{err}");
}

#[test]
fn a_follower_without_a_first_node_gives_up_with_the_address() {
    let addr = free_addr();
    let plan = plan(2, Strategy::Megatron);
    let mut f = follower(addr, &plan, 1);
    f.timeout = Duration::from_millis(300);
    let err = follow(
        &f,
        &Fake {
            steps: Arc::new(AtomicUsize::new(0)),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&format!("cannot reach node 0 at {addr}")),
        "{err}"
    );
}
