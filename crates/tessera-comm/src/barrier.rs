//! A reusable barrier that spins briefly, then parks.
//!
//! Spinning keeps a collective fast when every rank has its own core; parking keeps 3 or 4
//! ranks on 2 cores making progress (a spinning rank would steal the core of the rank it
//! waits for). The spin budget is chosen by the group from the core count.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};

/// Generation-counting barrier for a fixed number of parties, abortable.
#[derive(Debug)]
pub(crate) struct SpinParkBarrier {
    parties: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    aborted: AtomicBool,
    spins: u32,
    lock: Mutex<()>,
    wake: Condvar,
}

impl SpinParkBarrier {
    /// A barrier for `parties` threads that spins `spins` times before parking.
    pub(crate) fn new(parties: usize, spins: u32) -> Self {
        Self {
            parties,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            aborted: AtomicBool::new(false),
            spins,
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// Waits until all parties arrived; false when the barrier was aborted.
    pub(crate) fn wait(&self) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        if self.aborted.load(Ordering::Acquire) {
            return false;
        }
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.parties {
            // Reset before publishing the new generation: the next round's arrivals happen
            // only after they observe it.
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
            self.wake.notify_all();
            return true;
        }
        for _ in 0..self.spins {
            if self.generation.load(Ordering::Acquire) != generation {
                return true;
            }
            std::hint::spin_loop();
        }
        let mut guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.generation.load(Ordering::Acquire) != generation {
                return true;
            }
            if self.aborted.load(Ordering::Acquire) {
                return false;
            }
            guard = self
                .wake
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Wakes every waiter with failure; later waits fail at once.
    pub(crate) fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.wake.notify_all();
    }
}
