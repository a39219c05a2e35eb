//! The worker pool: every index runs once per dispatch, panics surface, idle workers wake.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tessera_kernels::CpuPool;

#[test]
fn run_calls_every_thread_index_exactly_once_per_dispatch() {
    for threads in [1, 2, 3, 5] {
        let pool = CpuPool::new(threads).unwrap();
        assert_eq!(pool.threads(), threads);
        let counts: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
        for _ in 0..5_000 {
            pool.run(|t| {
                counts[t].fetch_add(1, Ordering::Relaxed);
            });
        }
        for (t, c) in counts.iter().enumerate() {
            assert_eq!(
                c.load(Ordering::Relaxed),
                5_000,
                "threads={threads} index {t}"
            );
        }
    }
}

#[test]
fn parked_workers_wake_for_the_next_dispatch() {
    let pool = CpuPool::new(3).unwrap();
    let hits = AtomicUsize::new(0);
    for _ in 0..3 {
        // Long enough for every worker to stop spinning and park.
        std::thread::sleep(Duration::from_millis(5));
        pool.run(|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
    }
    assert_eq!(hits.load(Ordering::Relaxed), 9);
}

#[test]
fn nested_run_falls_back_to_serial_instead_of_deadlocking() {
    let pool = CpuPool::new(2).unwrap();
    let inner = AtomicUsize::new(0);
    pool.run(|_| {
        pool.run(|_| {
            inner.fetch_add(1, Ordering::Relaxed);
        });
    });
    assert_eq!(inner.load(Ordering::Relaxed), 4);
}

#[test]
fn a_worker_panic_reaches_the_caller_and_the_pool_still_works() {
    let pool = CpuPool::new(2).unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.run(|t| assert_ne!(t, 1, "worker share fails"));
    }));
    assert!(result.is_err());
    let hits = AtomicUsize::new(0);
    pool.run(|_| {
        hits.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(hits.load(Ordering::Relaxed), 2);
}

#[test]
fn zero_threads_means_the_caller_alone() {
    let pool = CpuPool::new(0).unwrap();
    assert_eq!(pool.threads(), 1);
}

#[test]
fn dropping_a_pool_right_after_a_dispatch_never_hangs() {
    // A worker may wake for a job whose shares the caller already ran, just as the pool
    // is dropped; it must still notice the shutdown. A hang fails through the watchdog.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for round in 0..3_000 {
            let pool = CpuPool::new(2 + round % 2).unwrap();
            pool.run(|t| {
                std::hint::black_box(t);
            });
            drop(pool);
        }
        tx.send(()).unwrap();
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(60)).is_ok(),
        "a pool's drop did not return"
    );
}
