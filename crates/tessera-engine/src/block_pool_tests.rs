//! Tests of the block pool and block tables, including property tests of the block states.

use super::*;
use proptest::prelude::*;
use std::collections::VecDeque;

#[test]
fn new_pool_rejects_zero_block_size() {
    assert_eq!(BlockPool::new(4, 0).unwrap_err(), PoolError::ZeroBlockSize);
}

#[test]
fn allocate_hands_out_every_block_once_then_none() {
    let mut pool = BlockPool::new(3, 16).unwrap();
    let ids: Vec<_> = (0..3).map(|_| pool.allocate().unwrap()).collect();
    assert_eq!(ids, [BlockId(0), BlockId(1), BlockId(2)]);
    assert_eq!(pool.allocate(), None);
    assert_eq!((pool.num_free(), pool.num_used()), (0, 3));
    pool.release(ids[1]).unwrap();
    assert_eq!(pool.allocate(), Some(ids[1]));
    pool.check_invariants();
}

#[test]
fn double_release_and_unknown_ids_are_errors() {
    let mut pool = BlockPool::new(2, 4).unwrap();
    let id = pool.allocate().unwrap();
    pool.release(id).unwrap();
    assert_eq!(pool.release(id), Err(PoolError::NotInUse(id)));
    assert_eq!(pool.retain(id), Err(PoolError::NotInUse(id)));
    assert_eq!(
        pool.release(BlockId(7)),
        Err(PoolError::UnknownBlock(BlockId(7)))
    );
    pool.check_invariants();
}

#[test]
fn retained_block_is_freed_only_by_its_last_holder() {
    let mut pool = BlockPool::new(2, 4).unwrap();
    let id = pool.allocate().unwrap();
    pool.retain(id).unwrap();
    pool.release(id).unwrap();
    assert_eq!(pool.ref_count(id), Some(1));
    assert_eq!(pool.num_used(), 1);
    pool.release(id).unwrap();
    assert_eq!(pool.num_used(), 0);
    pool.check_invariants();
}

#[test]
fn hash_block_is_fixed_fnv1a_and_chained() {
    // FNV-1a 64 of the single byte 0x00.
    assert_eq!(BlockPool::hash_block(None, &[]), 0xaf63_bd4c_8601_b7df);
    let first = BlockPool::hash_block(None, &[1, 2, 3]);
    assert_eq!(first, BlockPool::hash_block(None, &[1, 2, 3]));
    assert_ne!(first, BlockPool::hash_block(None, &[1, 2, 4]));
    let second = BlockPool::hash_block(Some(first), &[4, 5, 6]);
    assert_ne!(second, BlockPool::hash_block(None, &[4, 5, 6]));
    assert_ne!(second, BlockPool::hash_block(Some(first ^ 1), &[4, 5, 6]));
}

#[test]
fn released_registered_block_stays_cached_until_free_list_is_empty() {
    let mut pool = BlockPool::new(2, 4).unwrap();
    let id = pool.allocate().unwrap();
    assert!(pool.register(id, 42).unwrap());
    pool.release(id).unwrap();
    assert_eq!((pool.num_free(), pool.num_evictable()), (2, 1));
    let other = pool.allocate().unwrap();
    assert_ne!(other, id, "the free list is used before evicting");
    assert_eq!(pool.peek(42), Some(id));
    assert_eq!(
        pool.allocate(),
        Some(id),
        "evicted once the free list is empty"
    );
    assert_eq!(pool.peek(42), None);
    assert_eq!(pool.hash_of(id), None);
    assert_eq!(pool.lookup(42), None);
    pool.check_invariants();
}

#[test]
fn lookup_revives_cached_block_and_counts_hits() {
    let mut pool = BlockPool::new(2, 4).unwrap();
    let id = pool.allocate().unwrap();
    pool.register(id, 7).unwrap();
    assert_eq!(pool.lookup(7), Some(id));
    assert_eq!(pool.ref_count(id), Some(2));
    pool.release(id).unwrap();
    pool.release(id).unwrap();
    assert_eq!(pool.lookup(7), Some(id));
    assert_eq!(pool.ref_count(id), Some(1));
    assert_eq!(pool.num_evictable(), 0);
    assert_eq!(pool.lookup(8), None);
    assert_eq!(
        pool.prefix_stats(),
        PrefixStats {
            queries: 3,
            hits: 2
        }
    );
    pool.check_invariants();
}

#[test]
fn register_keeps_first_block_for_a_hash_and_first_hash_for_a_block() {
    let mut pool = BlockPool::new(2, 4).unwrap();
    let (a, b) = (pool.allocate().unwrap(), pool.allocate().unwrap());
    assert!(pool.register(a, 1).unwrap());
    assert!(!pool.register(b, 1).unwrap());
    assert!(!pool.register(a, 2).unwrap());
    assert!(pool.register(a, 1).unwrap());
    assert_eq!(pool.peek(1), Some(a));
    pool.release(b).unwrap();
    assert_eq!(pool.register(b, 3), Err(PoolError::NotInUse(b)));
    pool.check_invariants();
}

#[test]
fn table_slots_follow_block_ids() {
    let mut pool = BlockPool::new(4, 4).unwrap();
    let hog = pool.allocate().unwrap(); // so the table's blocks are not 0, 1
    let mut table = pool.new_table();
    assert_eq!(table.blocks_needed(5), 2);
    assert!(table.append(&mut pool, 5));
    assert_eq!(table.blocks(), [BlockId(1), BlockId(2)]);
    assert_eq!(table.slot(0), Some(4));
    assert_eq!(table.slot(4), Some(8));
    assert_eq!(table.slot(5), None);
    assert_eq!(table.spare_slots(), 3);
    assert_eq!(table.blocks_needed(3), 0);
    assert_eq!(table.blocks_needed(4), 1);
    assert!(!table.append(&mut pool, 8), "needs 2 blocks, 1 free");
    assert_eq!(table.num_tokens(), 5, "a failed append changes nothing");
    assert_eq!(pool.num_free(), 1);
    pool.free_table(&mut table).unwrap();
    pool.release(hog).unwrap();
    assert_eq!(pool.num_free(), 4);
    assert!(table.blocks().is_empty());
    pool.check_invariants();
}

#[test]
fn push_full_requires_an_aligned_table() {
    let mut pool = BlockPool::new(4, 4).unwrap();
    let shared = pool.allocate().unwrap();
    let mut table = pool.new_table();
    table.push_full(shared).unwrap();
    assert_eq!(table.num_tokens(), 4);
    assert!(table.append(&mut pool, 1));
    let other = pool.allocate().unwrap();
    assert_eq!(
        table.push_full(other),
        Err(PoolError::PartialLastBlock(other))
    );
    pool.release(other).unwrap();
    pool.free_table(&mut table).unwrap();
    assert_eq!(pool.num_used(), 0);
}

#[test]
fn free_table_evicts_the_tail_before_the_prefix() {
    let mut pool = BlockPool::new(3, 1).unwrap();
    let mut table = pool.new_table();
    assert!(table.append(&mut pool, 2));
    let [head, tail] = [table.blocks()[0], table.blocks()[1]];
    pool.register(head, 10).unwrap();
    pool.register(tail, 11).unwrap();
    pool.free_table(&mut table).unwrap();
    assert_eq!(pool.allocate(), Some(BlockId(2)), "free list first");
    assert_eq!(pool.allocate(), Some(tail));
    assert_eq!(pool.peek(10), Some(head));
}

/// One step of the random pool workload; indices pick among held references.
#[derive(Clone, Debug)]
enum Op {
    Allocate,
    Retain(usize),
    Release(usize),
    Register(usize, u8),
    Lookup(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Allocate),
        1 => any::<usize>().prop_map(Op::Retain),
        3 => any::<usize>().prop_map(Op::Release),
        2 => (any::<usize>(), 0u8..6).prop_map(|(i, h)| Op::Register(i, h)),
        2 => (0u8..6).prop_map(Op::Lookup),
    ]
}

/// A slow, obviously-correct pool: the same policy with plain collections.
struct Model {
    refs: Vec<u32>,
    hash: Vec<Option<u64>>,
    by_hash: HashMap<u64, usize>,
    free: Vec<usize>,     // stack: last is the next out
    lru: VecDeque<usize>, // front is the next evicted
}

impl Model {
    fn new(n: usize) -> Self {
        Self {
            refs: vec![0; n],
            hash: vec![None; n],
            by_hash: HashMap::new(),
            free: (0..n).rev().collect(),
            lru: VecDeque::new(),
        }
    }

    fn allocate(&mut self) -> Option<usize> {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let index = self.lru.pop_front()?;
                let hash = self.hash[index].take().unwrap();
                self.by_hash.remove(&hash);
                index
            }
        };
        self.refs[index] = 1;
        Some(index)
    }

    fn release(&mut self, index: usize) {
        self.refs[index] -= 1;
        if self.refs[index] == 0 {
            if self.hash[index].is_some() {
                self.lru.push_back(index);
            } else {
                self.free.push(index);
            }
        }
    }

    fn register(&mut self, index: usize, hash: u64) -> bool {
        if let Some(existing) = self.hash[index] {
            return existing == hash;
        }
        if self.by_hash.contains_key(&hash) {
            return false;
        }
        self.hash[index] = Some(hash);
        self.by_hash.insert(hash, index);
        true
    }

    fn lookup(&mut self, hash: u64) -> Option<usize> {
        let index = *self.by_hash.get(&hash)?;
        if self.refs[index] == 0 {
            self.lru.retain(|&i| i != index);
        }
        self.refs[index] += 1;
        Some(index)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_ops_never_leak_and_match_the_model(
        capacity in 0usize..8,
        ops in prop::collection::vec(op(), 0..120),
    ) {
        let mut pool = BlockPool::new(capacity, 4).unwrap();
        let mut model = Model::new(capacity);
        let mut held: Vec<BlockId> = Vec::new(); // one entry per reference we hold
        for op in ops {
            match op {
                Op::Allocate => {
                    let plain_free = pool.num_free() - pool.num_evictable();
                    let got = pool.allocate();
                    prop_assert_eq!(got.map(BlockId::index), model.allocate());
                    if let Some(id) = got {
                        if plain_free > 0 {
                            prop_assert!(pool.hash_of(id).is_none());
                        }
                        held.push(id);
                    }
                }
                Op::Retain(i) if !held.is_empty() => {
                    let id = held[i % held.len()];
                    pool.retain(id).unwrap();
                    model.refs[id.index()] += 1;
                    held.push(id);
                }
                Op::Release(i) if !held.is_empty() => {
                    let id = held.swap_remove(i % held.len());
                    pool.release(id).unwrap();
                    model.release(id.index());
                }
                Op::Register(i, h) if !held.is_empty() => {
                    let id = held[i % held.len()];
                    let hash = u64::from(h);
                    prop_assert_eq!(pool.register(id, hash).unwrap(), model.register(id.index(), hash));
                }
                Op::Lookup(h) => {
                    let hash = u64::from(h);
                    let got = pool.lookup(hash);
                    prop_assert_eq!(got.map(BlockId::index), model.lookup(hash));
                    if let Some(id) = got {
                        prop_assert_eq!(pool.hash_of(id), Some(hash), "hit on an evicted hash");
                        held.push(id);
                    }
                }
                _ => {}
            }
            pool.check_invariants();
            prop_assert_eq!(pool.num_free() + pool.num_used(), pool.capacity());
            for index in 0..capacity {
                let id = BlockId(index as u32);
                let ours = held.iter().filter(|&&h| h == id).count() as u32;
                prop_assert_eq!(pool.ref_count(id), Some(ours));
                prop_assert_eq!(pool.hash_of(id), model.hash[index]);
            }
        }
        for id in held.drain(..) {
            pool.release(id).unwrap();
        }
        prop_assert_eq!(pool.num_used(), 0);
        prop_assert_eq!(pool.num_free(), capacity);
        pool.check_invariants();
    }
}
