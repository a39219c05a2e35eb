//! `CpuPool`: the worker threads one rank owns, and the dispatch that hands them a job.
//!
//! A dispatch publishes a type-erased pointer to the caller's closure, bumps a generation
//! counter and runs thread 0's share on the caller's own thread. Idle workers spin on the
//! counter for a short while (a decode step issues ~200 kernels back to back), then yield,
//! then park on a condition variable, so an idle pool costs no CPU.

use std::any::Any;
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

/// Worker threads owned by one rank (never a global pool); parks when idle, never spins unboundedly.
pub struct CpuPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises dispatches; a nested or concurrent `run` falls back to running serially.
    dispatch: Mutex<()>,
    isa: Isa,
}

/// One dispatched closure with its lifetime erased: `call(data, thread)` runs it.
#[derive(Clone, Copy)]
struct Job {
    data: *const (),
    call: unsafe fn(*const (), usize),
}

/// State shared between the dispatching thread and the workers.
struct Shared {
    /// Bumped once per dispatch (and once at shutdown); workers wait for it to change.
    generation: AtomicU64,
    /// The current job; see the `Sync` impl for who may touch it when.
    job: UnsafeCell<Option<Job>>,
    /// Workers that have not yet finished the current job.
    pending: AtomicUsize,
    /// Set by a worker whose share of the job panicked.
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
// dispatcher, holding the `dispatch` lock, before it bumps `generation` (SeqCst) and after
// it has seen `pending == 0` (SeqCst load), i.e. after every worker's last read of the
// previous job (each worker reads `job` after seeing the new generation and before its
// `pending` decrement). So writes and reads of `job` are ordered by happens-before and
// never race. The erased closure behind `Job::data` is `Sync` (enforced by `run`).
unsafe impl Sync for Shared {}
// SAFETY: `Job` holds a pointer to a `Sync` closure that outlives every use (see `run`);
// sending the pointer to another thread is then sound, and all other fields are Send.
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
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
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
        for index in 1..threads.max(1) {
            let shared = Arc::clone(&pool.shared);
            let handle = std::thread::Builder::new()
                .name(format!("tessera-cpu-{index}"))
                .spawn(move || worker_loop(&shared, index))
                .map_err(|e| KernelError::ThreadSpawn(e.to_string()))?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Number of threads, the caller's included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// The instruction set this pool's kernels use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Runs f(thread_index) on every thread (the caller's thread counts as thread 0) and returns when all are done.
    ///
    /// A call made from inside `f`, or while another thread's call on this pool is in
    /// flight, runs every index serially on the calling thread instead of deadlocking.
    /// A panic in any share is re-raised here after all shares have finished.
    pub fn run<F: Fn(usize) + Sync>(&self, f: F) {
        let threads = self.threads();
        if threads == 1 {
            f(0);
            return;
        }
        let _guard = match self.dispatch.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => {
                (0..threads).for_each(&f);
                return;
            }
        };
        let shared = &*self.shared;
        shared.pending.store(threads - 1, Ordering::SeqCst);
        shared.panicked.store(false, Ordering::SeqCst);
        // SAFETY: we hold the dispatch lock and the previous dispatch (if any) waited for
        // `pending == 0`, so no worker reads `job` now (see the `Sync` impl on `Shared`).
        // The pointer to `f` stays valid until we have waited for all workers below, and
        // the wait happens even if our own share panics (it is caught).
        unsafe {
            *shared.job.get() = Some(Job {
                data: (&f as *const F).cast(),
                call: call_erased::<F>,
            });
        }
        shared.generation.fetch_add(1, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _lock = lock(&shared.lock);
            shared.work_ready.notify_all();
        }
        let own = catch_unwind(AssertUnwindSafe(|| f(0)));
        wait_all_done(shared);
        // SAFETY: all workers are done with the job (pending == 0), so nothing reads it;
        // clearing it drops the last copy of the pointer to `f` before `f` goes away.
        unsafe {
            *shared.job.get() = None;
        }
        if let Err(payload) = own {
            resume_unwind(payload);
        }
        if shared.panicked.load(Ordering::SeqCst) {
            panic!("a CpuPool worker thread panicked while running a job");
        }
    }
}

impl Drop for CpuPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        {
            let _lock = lock(&self.shared.lock);
            self.shared.work_ready.notify_all();
        }
        for handle in self.workers.drain(..) {
            // A worker catches its job's panics, so join only fails if the runtime does.
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

/// Calls the closure behind `data` with `thread`.
///
/// # Safety
/// `data` must point to a live `F`.
unsafe fn call_erased<F: Fn(usize) + Sync>(data: *const (), thread: usize) {
    // SAFETY: the caller guarantees `data` points to a live `F`; `F: Sync` makes a shared
    // reference from this thread sound.
    let f = unsafe { &*data.cast::<F>() };
    f(thread);
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

/// The dispatcher's wait for every worker to finish the current job.
fn wait_all_done(shared: &Shared) {
    let done = || shared.pending.load(Ordering::SeqCst) == 0;
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

/// A worker's whole life: wait for a new generation, run its share, report, repeat.
fn worker_loop(shared: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        let changed = || shared.generation.load(Ordering::SeqCst) != seen;
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
        seen = shared.generation.load(Ordering::SeqCst);
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        // SAFETY: the dispatcher wrote `job` before bumping the generation we just saw and
        // will not touch it again until we decrement `pending` (see `Shared`'s Sync impl).
        let job = unsafe { *shared.job.get() };
        if let Some(job) = job {
            let result: Result<(), Box<dyn Any + Send>> = catch_unwind(AssertUnwindSafe(|| {
                // SAFETY: `run` keeps the closure alive until `pending` reaches zero,
                // which happens only after this call returns.
                unsafe { (job.call)(job.data, index) }
            }));
            if result.is_err() {
                shared.panicked.store(true, Ordering::SeqCst);
            }
        }
        if shared.pending.fetch_sub(1, Ordering::SeqCst) == 1
            && shared.caller_sleeping.load(Ordering::SeqCst)
        {
            let _lock = lock(&shared.lock);
            shared.all_done.notify_one();
        }
    }
}
