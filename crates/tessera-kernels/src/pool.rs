//! `CpuPool`: the worker threads one rank owns, and the dispatch that hands them a job.
//!
//! A job is split into `threads` shares. A dispatch publishes a type-erased pointer to
//! the caller's closure together with a new generation in one claim word
//! (`generation << 32 | next unclaimed share`), runs share 0 on the caller's own thread,
//! then claims and runs any share no worker has claimed yet, and waits only for shares
//! already being run. So a worker the OS has not scheduled (a busy 2-core machine) never
//! delays the caller. Idle workers spin on the claim word for a short while (a decode step
//! issues ~200 kernels back to back), then yield, then park on a condition variable, so an
//! idle pool costs no CPU.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::KernelError;
use crate::isa::Isa;

/// How long an idle thread busy-waits (with `spin_loop`) before it starts yielding.
const SPIN: Duration = Duration::from_micros(20);
/// How long an idle thread keeps yielding its core before it parks.
const YIELD: Duration = Duration::from_micros(200);
/// The low half of the claim word counts claimed shares.
const SHARE_MASK: u64 = 0xffff_ffff;

/// Worker threads owned by one rank (never a global pool); parks when idle, never spins unboundedly.
pub struct CpuPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises dispatches; a nested or concurrent `run` falls back to running serially.
    dispatch: Mutex<()>,
    isa: Isa,
}

/// One dispatched closure with its lifetime erased: `call(data, share)` runs it.
#[derive(Clone, Copy)]
struct Job {
    data: *const (),
    call: unsafe fn(*const (), usize),
}

/// State shared between the dispatching thread and the workers.
struct Shared {
    /// Number of shares per job (the pool's thread count).
    shares: usize,
    /// `generation << 32 | next unclaimed share`; a new generation announces a new job.
    claims: AtomicU64,
    /// The current job; see the `Sync` impl for who may touch it when.
    job: UnsafeCell<Option<Job>>,
    /// Shares other than 0 that have finished in the current generation.
    done: AtomicUsize,
    /// Set when a share of the current job panicked.
    panicked: AtomicBool,
    shutdown: AtomicBool,
    /// Workers parked (or about to park) on `work_ready`.
    sleepers: AtomicUsize,
    /// Whether the dispatcher is parked (or about to park) on `all_done`.
    caller_sleeping: AtomicBool,
    lock: Mutex<()>,
    work_ready: Condvar,
    all_done: Condvar,
}

// SAFETY: every field but `job` is Sync on its own. `job` is written only by the
// dispatcher, holding the `dispatch` lock: before it publishes a generation in `claims`
// (SeqCst store), and after it has seen every claimed share finish (`done`, SeqCst). A
// thread reads `job` only after a successful claim CAS on the current generation, which
// orders the read after the write, and the share it claimed keeps the dispatcher from
// writing again until that share's `done` increment, which follows the read. So accesses
// to `job` never race. The closure behind `Job::data` is `Sync` (required by `run`).
unsafe impl Sync for Shared {}
// SAFETY: `Job` only points at a `Sync` closure that outlives every use (see `run`), so the
// pointer may move to another thread; all other fields are Send.
unsafe impl Send for Shared {}

impl CpuPool {
    /// A pool of `threads` threads (0 counts as 1, the caller's own) using the fastest ISA.
    pub fn new(threads: usize) -> Result<Self, KernelError> {
        Self::with_isa(threads, Isa::detect())
    }

    /// A pool that uses `isa` (for tests and benchmarks); fails if the CPU lacks it.
    pub fn with_isa(threads: usize, isa: Isa) -> Result<Self, KernelError> {
        if !isa.is_available() {
            return Err(KernelError::IsaUnavailable(isa));
        }
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            shares: threads,
            claims: AtomicU64::new(threads as u64),
            job: UnsafeCell::new(None),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            caller_sleeping: AtomicBool::new(false),
            lock: Mutex::new(()),
            work_ready: Condvar::new(),
            all_done: Condvar::new(),
        });
        let mut pool = CpuPool {
            shared,
            workers: Vec::new(),
            dispatch: Mutex::new(()),
            isa,
        };
        for index in 1..threads {
            let shared = Arc::clone(&pool.shared);
            let handle = std::thread::Builder::new()
                .name(format!("tessera-cpu-{index}"))
                .spawn(move || worker_loop(&shared))
                .map_err(|e| KernelError::ThreadSpawn(e.to_string()))?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Number of threads, the caller's included.
    pub fn threads(&self) -> usize {
        self.shared.shares
    }

    /// The instruction set this pool's kernels use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Runs f(thread_index) on every thread (the caller's thread counts as thread 0) and returns when all are done.
    ///
    /// Precisely: `f(i)` runs once for each share `i` in `0..threads()`; share 0 runs on
    /// the caller, the others on workers, or on the caller when no worker has picked
    /// them up by the time the caller is free. A call made from inside `f`, or while
    /// another thread's call on this pool is in flight, runs every share serially on the
    /// calling thread instead of deadlocking. A panic in any share is re-raised here after
    /// all shares have finished.
    pub fn run<F: Fn(usize) + Sync>(&self, f: F) {
        let shares = self.threads();
        if shares == 1 {
            f(0);
            return;
        }
        let _guard = match self.dispatch.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                (0..shares).for_each(&f);
                return;
            }
        };
        let shared = &*self.shared;
        shared.done.store(0, Ordering::SeqCst);
        shared.panicked.store(false, Ordering::SeqCst);
        // SAFETY: we hold the dispatch lock and every share of the previous job finished
        // before its `run` returned, so no thread reads `job` now (see `Shared`'s Sync
        // impl). The pointer to `f` stays valid until all shares are done below, which
        // happens even if our own share panics (it is caught).
        unsafe {
            *shared.job.get() = Some(Job {
                data: (&f as *const F).cast(),
                call: call_erased::<F>,
            });
        }
        let generation = (shared.claims.load(Ordering::SeqCst) >> 32) + 1;
        // Share 0 is the caller's: claiming starts at 1.
        shared.claims.store(generation << 32 | 1, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _lock = lock(&shared.lock);
            shared.work_ready.notify_all();
        }
        let own = catch_unwind(AssertUnwindSafe(|| f(0)));
        while let Some(share) = claim(shared, generation) {
            run_share(shared, &f, share);
        }
        wait_all_done(shared);
        // SAFETY: every share is done, so nothing reads `job`; clearing it drops the last
        // copy of the pointer to `f` before `f` goes away.
        unsafe {
            *shared.job.get() = None;
        }
        if let Err(payload) = own {
            resume_unwind(payload);
        }
        if shared.panicked.load(Ordering::SeqCst) {
            panic!("a CpuPool share panicked while running a job");
        }
    }
}

impl Drop for CpuPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        // A new generation with every share already claimed: workers wake, run nothing.
        let generation = (self.shared.claims.load(Ordering::SeqCst) >> 32) + 1;
        let all_claimed = generation << 32 | self.shared.shares as u64;
        self.shared.claims.store(all_claimed, Ordering::SeqCst);
        {
            let _lock = lock(&self.shared.lock);
            self.shared.work_ready.notify_all();
        }
        for handle in self.workers.drain(..) {
            // Shares' panics are caught, so join only fails if the runtime does.
            let _ = handle.join();
        }
    }
}

impl std::fmt::Debug for CpuPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuPool")
            .field("threads", &self.threads())
            .field("isa", &self.isa)
            .finish()
    }
}

/// Calls the closure behind `data` with `share`.
///
/// # Safety
/// `data` must point to a live `F`.
unsafe fn call_erased<F: Fn(usize) + Sync>(data: *const (), share: usize) {
    // SAFETY: the caller guarantees `data` points to a live `F`; `F: Sync` makes a shared
    // reference from this thread sound.
    let f = unsafe { &*data.cast::<F>() };
    f(share);
}

/// Claims the next unclaimed share of `generation`, if that job still has one.
fn claim(shared: &Shared, generation: u64) -> Option<usize> {
    let mut word = shared.claims.load(Ordering::SeqCst);
    loop {
        let share = (word & SHARE_MASK) as usize;
        if word >> 32 != generation || share >= shared.shares {
            return None;
        }
        match shared.claims.compare_exchange_weak(
            word,
            word + 1,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => return Some(share),
            Err(current) => word = current,
        }
    }
}

/// Runs claimed share `share` of the current job through `call`, then reports it done.
fn run_share(shared: &Shared, call: impl Fn(usize), share: usize) {
    if catch_unwind(AssertUnwindSafe(|| call(share))).is_err() {
        shared.panicked.store(true, Ordering::SeqCst);
    }
    let finished = shared.done.fetch_add(1, Ordering::SeqCst) + 1;
    if finished == shared.shares - 1 && shared.caller_sleeping.load(Ordering::SeqCst) {
        let _lock = lock(&shared.lock);
        shared.all_done.notify_one();
    }
}

/// Locks `m`, ignoring poisoning (the mutex guards no data).
fn lock(m: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Spins, then yields, then parks until `done()` holds; `park` does the parking.
fn wait_until(done: impl Fn() -> bool, park: impl FnOnce()) {
    let start = Instant::now();
    let mut polls = 0u32;
    while !done() {
        polls = polls.wrapping_add(1);
        // Reading the clock costs ~20 ns, so look at it only every 64 polls.
        if !polls.is_multiple_of(64) {
            std::hint::spin_loop();
            continue;
        }
        let waited = start.elapsed();
        if waited > SPIN + YIELD {
            park();
            return;
        }
        if waited > SPIN {
            std::thread::yield_now();
        }
    }
}

/// The dispatcher's wait for shares that workers claimed but have not finished.
fn wait_all_done(shared: &Shared) {
    let done = || shared.done.load(Ordering::SeqCst) == shared.shares - 1;
    wait_until(done, || {
        shared.caller_sleeping.store(true, Ordering::SeqCst);
        let mut guard = lock(&shared.lock);
        while !done() {
            guard = shared
                .all_done
                .wait(guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        drop(guard);
        shared.caller_sleeping.store(false, Ordering::SeqCst);
    });
}

/// A worker's whole life: wait for a new generation, run the shares it can claim, repeat.
fn worker_loop(shared: &Shared) {
    // Generation 0 is the pool's creation; a worker that starts late still sees every
    // later generation (in particular `Drop`'s) as a change.
    let mut seen = 0;
    loop {
        let changed = || shared.claims.load(Ordering::SeqCst) >> 32 != seen;
        wait_until(changed, || {
            shared.sleepers.fetch_add(1, Ordering::SeqCst);
            let mut guard = lock(&shared.lock);
            while !changed() {
                guard = shared
                    .work_ready
                    .wait(guard)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            drop(guard);
            shared.sleepers.fetch_sub(1, Ordering::SeqCst);
        });
        // Read the generation before the shutdown flag: `Drop` sets the flag before it
        // publishes its generation, so a worker that adopts that generation as `seen`
        // is sure to see the flag and cannot park waiting for a later one.
        seen = shared.claims.load(Ordering::SeqCst) >> 32;
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        while let Some(share) = claim(shared, seen) {
            // SAFETY: our claim on the current generation keeps the dispatcher from
            // touching `job` until this share reports done (see `Shared`'s Sync impl).
            let job = unsafe { *shared.job.get() };
            if let Some(job) = job {
                let call = |share| {
                    // SAFETY: `run` keeps the closure alive until every share is done,
                    // and this one is not done until `call` returns.
                    unsafe { (job.call)(job.data, share) }
                };
                run_share(shared, call, share);
            }
        }
    }
}
