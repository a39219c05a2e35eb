//! Tests of the prefill budget while decodes run ([`Scheduler::schedule_paced`]).

use super::*;

/// A sequence that has decoded once (so it decodes next step) next to a waiting long prompt.
fn one_decoding_one_waiting() -> Scheduler {
    let mut sched = Scheduler::new(config(64, 4, 32)).unwrap();
    sched.add(request(1, prompt(4, 1), 10)).unwrap();
    let first = sched.schedule();
    assert_eq!(first.num_tokens(), 4);
    sched.append_token(1, 7).unwrap();
    sched.add(request(2, prompt(100, 2), 4)).unwrap();
    sched
}

#[test]
fn prefill_cap_limits_prefill_while_a_decode_runs() {
    let mut sched = one_decoding_one_waiting();
    let mut seen = None;
    let plan = sched.schedule_paced(|shape| {
        seen = Some(shape);
        10
    });
    assert_eq!(
        seen,
        Some(StepShape {
            decodes: 1,
            batch: 2
        })
    );
    let lens: Vec<(u64, usize)> = plan.seqs.iter().map(|s| (s.id, s.tokens.len())).collect();
    assert_eq!(lens, vec![(1, 1), (2, 10)]);
    // The running prefill goes on under the cap, after the decode.
    sched.append_token(1, 8).unwrap();
    let plan = sched.schedule_paced(|_| 12);
    let lens: Vec<(u64, usize)> = plan.seqs.iter().map(|s| (s.id, s.tokens.len())).collect();
    assert_eq!(lens, vec![(1, 1), (2, 12)]);
    assert_eq!(plan.seqs[1].start, 10);
}

#[test]
fn prefill_takes_the_whole_step_when_nothing_decodes() {
    let mut sched = Scheduler::new(config(64, 4, 32)).unwrap();
    sched.add(request(1, prompt(100, 1), 4)).unwrap();
    let mut asked = false;
    let plan = sched.schedule_paced(|_| {
        asked = true;
        1
    });
    assert!(!asked);
    assert_eq!(plan.num_tokens(), 32);
}

#[test]
fn zero_prefill_cap_still_runs_the_decodes_and_keeps_the_prefill_waiting() {
    let mut sched = one_decoding_one_waiting();
    let plan = sched.schedule_paced(|_| 0);
    let ids: Vec<u64> = plan.seqs.iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![1]);
    assert!(plan.preempted.is_empty());
    assert_eq!(sched.num_waiting(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Under any prefill cap, every request finishes with the same tokens as without one,
    /// and the simulated KV cache checks every chunk's positions.
    #[test]
    fn capped_prefill_gives_the_same_outputs_as_full_chunks(
        cap in 0usize..20,
        max_batch_tokens in 1usize..40,
        lens in prop::collection::vec(1usize..40, 1..8),
    ) {
        let run = |cap: Option<usize>| {
            let mut sim = Sim::new(config(64, 4, max_batch_tokens));
            sim.cap = cap;
            for (id, &len) in lens.iter().enumerate() {
                sim.add(request(id as u64, prompt(len, id as u32 + 1), 5)).unwrap();
            }
            while sim.live() > 0 {
                assert!(sim.steps < 5_000, "no progress");
                sim.step();
            }
            sim.finished
        };
        prop_assert_eq!(run(Some(cap)), run(None));
    }
}
