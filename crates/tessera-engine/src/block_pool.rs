//! The paged KV-cache block manager: which blocks exist, who holds them, and which full
//! blocks stay cached for prefix reuse.
//!
//! The pool only keeps the books; the KV memory lives with the ranks. Every rank holds
//! the same block ids, so one [`BlockTable`] per sequence serves all ranks. A token at
//! position `pos` lives in slot `table[pos / block_size] * block_size + pos % block_size`.
//!
//! ```text
//!  sequence: 37 tokens, block_size 16          BlockTable { blocks: [4, 9, 2], num_tokens: 37 }
//!    pos  0..16 -> block 4 (slots  64..80 )    full, cached as h0 = hash_block(None,     t[0..16])
//!    pos 16..32 -> block 9 (slots 144..160)    full, cached as h1 = hash_block(Some(h0), t[16..32])
//!    pos 32..37 -> block 2 (slots  32..37 )    partial: still being written, never cached
//!
//!  pool, capacity 10:
//!    index    0     1     2     3     4     5     6     7     8     9
//!    state   free  used  used  free  used  cach  free  used  free  used
//!    refs     -     1     1     -     2     0     -     1     -     1
//!    hash     -     -     -     -     h0    h7    -     -     -     h1
//!
//!    free list:  head ─> 3 ─> 0 ─> 8 ─> 6 ─> end   (each free block stores the next index)
//!    evictable:  [5]   (ref count 0 but hashed; oldest first; taken only when the free list is empty)
//!    cached:     { h0: 4, h1: 9, h7: 5 }            (block 4 is shared by two sequences)
//! ```
//!
//! A block is in exactly one state: free (on the free list, no hash), in use (ref count
//! ≥ 1, maybe hashed), or cached (ref count 0, hashed, evictable). Only full blocks are
//! hashed, and a full block is never written again, so sharing one needs no copy.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Index of one KV-cache block; the same id names the same block on every rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub(crate) u32);

impl BlockId {
    /// The block's index into the pool and into each rank's KV buffers.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a block-pool operation was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// A block must hold at least one token.
    #[error("block size must be at least 1 token")]
    ZeroBlockSize,
    /// Block ids are 32-bit.
    #[error("{requested} blocks requested, but a pool holds at most {max}")]
    TooManyBlocks {
        /// Blocks asked for.
        requested: usize,
        /// The most a pool can hold.
        max: usize,
    },
    /// The id does not name a block of this pool.
    #[error("block {0} does not exist in this pool")]
    UnknownBlock(BlockId),
    /// The block has no holder (released twice, or never allocated).
    #[error("block {0} is not held by anyone (released twice?)")]
    NotInUse(BlockId),
    /// A shared full block can only follow full blocks in a table.
    #[error("cannot append full block {0}: the table's last block is only partly filled")]
    PartialLastBlock(BlockId),
}

/// Prefix-cache counters, in blocks: every [`BlockPool::lookup`] is one query.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixStats {
    /// Lookups made.
    pub queries: u64,
    /// Lookups that found a cached block.
    pub hits: u64,
}

impl PrefixStats {
    /// Hits over queries, 0 when nothing was queried.
    pub fn hit_rate(&self) -> f64 {
        if self.queries == 0 {
            0.0
        } else {
            self.hits as f64 / self.queries as f64
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockState {
    /// On the free list; `next` is the index of the next free block.
    Free { next: Option<u32> },
    /// Ref count 0 but hashed: a lookup can revive it; evicted oldest `stamp` first.
    Cached { stamp: u64 },
    /// Held by `refs` ≥ 1 block tables.
    InUse { refs: u32 },
}

#[derive(Clone, Copy, Debug)]
struct Block {
    state: BlockState,
    hash: Option<u64>,
}

/// A fixed pool of KV-cache blocks with reference counts and a prefix cache.
#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<Block>,
    block_size: usize,
    free_head: Option<u32>,
    free_len: usize,
    in_use: usize,
    /// Cached blocks by release stamp: the first entry is the least recently released.
    evictable: BTreeMap<u64, u32>,
    next_stamp: u64,
    /// Hash -> block, for every hashed block (in use or cached).
    by_hash: HashMap<u64, u32>,
    stats: PrefixStats,
}

impl BlockPool {
    /// A pool of `num_blocks` empty blocks of `block_size` tokens each.
    pub fn new(num_blocks: usize, block_size: usize) -> Result<Self, PoolError> {
        if block_size == 0 {
            return Err(PoolError::ZeroBlockSize);
        }
        let max = u32::MAX as usize;
        if num_blocks > max {
            return Err(PoolError::TooManyBlocks {
                requested: num_blocks,
                max,
            });
        }
        // Initially the free list runs 0 -> 1 -> ... so the lowest ids go out first.
        let blocks = (0..num_blocks)
            .map(|i| Block {
                state: BlockState::Free {
                    next: (i + 1 < num_blocks).then_some((i + 1) as u32),
                },
                hash: None,
            })
            .collect();
        Ok(Self {
            blocks,
            block_size,
            free_head: (num_blocks > 0).then_some(0),
            free_len: num_blocks,
            in_use: 0,
            evictable: BTreeMap::new(),
            next_stamp: 0,
            by_hash: HashMap::new(),
            stats: PrefixStats::default(),
        })
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn capacity(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that [`allocate`](Self::allocate) can hand out: free plus evictable cached.
    pub fn num_free(&self) -> usize {
        self.free_len + self.evictable.len()
    }

    /// Blocks held by at least one table.
    pub fn num_used(&self) -> usize {
        self.in_use
    }

    /// Cached blocks nobody holds (counted in [`num_free`](Self::num_free)).
    pub fn num_evictable(&self) -> usize {
        self.evictable.len()
    }

    /// Prefix-cache query and hit counters since the pool was made.
    pub fn prefix_stats(&self) -> PrefixStats {
        self.stats
    }

    /// An empty table for blocks of this pool.
    pub fn new_table(&self) -> BlockTable {
        BlockTable {
            blocks: Vec::new(),
            num_tokens: 0,
            block_size: self.block_size,
        }
    }

    /// Takes a block with ref count 1 and no hash: from the free list, or else evicts
    /// the least recently released cached block. `None` when every block is in use.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let index = match self.pop_free() {
            Some(index) => index,
            None => self.evict_oldest()?,
        };
        self.blocks[index as usize].state = BlockState::InUse { refs: 1 };
        self.in_use += 1;
        Some(BlockId(index))
    }

    /// Adds a holder to a block in use (a fork or a share).
    pub fn retain(&mut self, id: BlockId) -> Result<(), PoolError> {
        match &mut self.block_mut(id)?.state {
            BlockState::InUse { refs } => {
                *refs += 1;
                Ok(())
            }
            _ => Err(PoolError::NotInUse(id)),
        }
    }

    /// Drops a holder; at ref count 0 a hashed block becomes evictable, any other goes
    /// back on the free list.
    pub fn release(&mut self, id: BlockId) -> Result<(), PoolError> {
        let stamp = self.next_stamp;
        let block = self.block_mut(id)?;
        let BlockState::InUse { refs } = &mut block.state else {
            return Err(PoolError::NotInUse(id));
        };
        *refs -= 1;
        if *refs > 0 {
            return Ok(());
        }
        let hashed = block.hash.is_some();
        if hashed {
            block.state = BlockState::Cached { stamp };
        }
        self.in_use -= 1;
        if hashed {
            self.evictable.insert(stamp, id.0);
            self.next_stamp += 1;
        } else {
            self.push_free(id.0);
        }
        Ok(())
    }

    /// Releases every block of `table`, last block first (so a sequence's tail, the
    /// part least likely to be shared, is evicted before its prefix), and empties it.
    /// This is the one way a sequence's blocks go back.
    pub fn free_table(&mut self, table: &mut BlockTable) -> Result<(), PoolError> {
        let mut result = Ok(());
        for id in table.blocks.drain(..).rev() {
            let released = self.release(id);
            if result.is_ok() {
                result = released;
            }
        }
        table.num_tokens = 0;
        result
    }

    /// The content hash of a full block: 64-bit FNV-1a over a tag byte (0 for the first
    /// block; 1 followed by the parent hash's 8 little-endian bytes otherwise), then each
    /// token's 4 little-endian bytes. Fixed, so equal across runs, machines and ranks.
    ///
    /// Chaining the parent hash makes a block's hash stand for the whole prefix up to it.
    /// It is not collision-resistant against a user crafting prompts on purpose.
    pub fn hash_block(parent: Option<u64>, tokens: &[u32]) -> u64 {
        const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut hash = FNV_OFFSET;
        let mut feed = |bytes: &[u8]| {
            for &byte in bytes {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(FNV_PRIME);
            }
        };
        match parent {
            None => feed(&[0]),
            Some(parent) => {
                feed(&[1]);
                feed(&parent.to_le_bytes());
            }
        }
        for token in tokens {
            feed(&token.to_le_bytes());
        }
        hash
    }

    /// Registers a full block in use under `hash` so later lookups can share it.
    /// Returns whether the block is now cached under `hash`: `false` when another block
    /// already holds that hash, or this block already holds another one (the first
    /// registration wins; contents of a full block never change).
    pub fn register(&mut self, id: BlockId, hash: u64) -> Result<bool, PoolError> {
        let taken = self.by_hash.contains_key(&hash);
        let block = self.block_mut(id)?;
        if !matches!(block.state, BlockState::InUse { .. }) {
            return Err(PoolError::NotInUse(id));
        }
        if let Some(existing) = block.hash {
            return Ok(existing == hash);
        }
        if taken {
            return Ok(false);
        }
        block.hash = Some(hash);
        self.by_hash.insert(hash, id.0);
        Ok(true)
    }

    /// Finds the block cached under `hash` and takes a reference to it (the caller must
    /// release it); counts one prefix-cache query, and a hit when found.
    pub fn lookup(&mut self, hash: u64) -> Option<BlockId> {
        self.stats.queries += 1;
        let index = *self.by_hash.get(&hash)?;
        let block = &mut self.blocks[index as usize];
        match block.state {
            BlockState::InUse { ref mut refs } => *refs += 1,
            BlockState::Cached { stamp } => {
                self.evictable.remove(&stamp);
                block.state = BlockState::InUse { refs: 1 };
                self.in_use += 1;
            }
            // Unreachable: a free block has no hash and no `by_hash` entry.
            BlockState::Free { .. } => return None,
        }
        self.stats.hits += 1;
        Some(BlockId(index))
    }

    /// The block cached under `hash`, without taking a reference or counting a query.
    pub fn peek(&self, hash: u64) -> Option<BlockId> {
        self.by_hash.get(&hash).map(|&index| BlockId(index))
    }

    /// Holders of a block: 0 when free or cached, `None` for an unknown id.
    pub fn ref_count(&self, id: BlockId) -> Option<u32> {
        self.blocks.get(id.index()).map(|block| match block.state {
            BlockState::InUse { refs } => refs,
            _ => 0,
        })
    }

    /// The hash a block is registered under, if any.
    pub fn hash_of(&self, id: BlockId) -> Option<u64> {
        self.blocks.get(id.index()).and_then(|block| block.hash)
    }

    fn block_mut(&mut self, id: BlockId) -> Result<&mut Block, PoolError> {
        self.blocks
            .get_mut(id.index())
            .ok_or(PoolError::UnknownBlock(id))
    }

    fn pop_free(&mut self) -> Option<u32> {
        let index = self.free_head?;
        let BlockState::Free { next } = self.blocks[index as usize].state else {
            // Only a bookkeeping bug leads here; refuse rather than hand out a live block.
            tracing::error!(index, "free list head is not a free block");
            return None;
        };
        self.free_head = next;
        self.free_len -= 1;
        Some(index)
    }

    fn push_free(&mut self, index: u32) {
        let block = &mut self.blocks[index as usize];
        block.state = BlockState::Free {
            next: self.free_head,
        };
        block.hash = None;
        self.free_head = Some(index);
        self.free_len += 1;
    }

    fn evict_oldest(&mut self) -> Option<u32> {
        let (_, index) = self.evictable.pop_first()?;
        let block = &mut self.blocks[index as usize];
        if let Some(hash) = block.hash.take() {
            self.by_hash.remove(&hash);
        }
        Some(index)
    }

    /// Panics unless every count, link and map agrees with the block states.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        let mut on_free_list = vec![false; self.capacity()];
        let mut cursor = self.free_head;
        let mut walked = 0;
        while let Some(index) = cursor {
            let block = &self.blocks[index as usize];
            let BlockState::Free { next } = block.state else {
                panic!("block {index} is on the free list but not free");
            };
            assert!(!on_free_list[index as usize], "free list cycles at {index}");
            assert!(block.hash.is_none(), "free block {index} has a hash");
            on_free_list[index as usize] = true;
            walked += 1;
            cursor = next;
        }
        assert_eq!(walked, self.free_len, "free list length");
        let mut in_use = 0;
        let mut cached = 0;
        for (index, block) in self.blocks.iter().enumerate() {
            match block.state {
                BlockState::Free { .. } => assert!(on_free_list[index], "block {index} lost"),
                BlockState::InUse { refs } => {
                    assert!(refs > 0, "block {index} in use with 0 refs");
                    in_use += 1;
                }
                BlockState::Cached { stamp } => {
                    assert_eq!(self.evictable.get(&stamp), Some(&(index as u32)));
                    assert!(block.hash.is_some(), "cached block {index} has no hash");
                    cached += 1;
                }
            }
            if let Some(hash) = block.hash {
                assert_eq!(self.by_hash.get(&hash), Some(&(index as u32)));
            }
        }
        assert_eq!(in_use, self.in_use, "in-use count");
        assert_eq!(cached, self.evictable.len(), "evictable count");
        for (&hash, &index) in &self.by_hash {
            assert_eq!(self.blocks[index as usize].hash, Some(hash));
        }
        assert_eq!(self.num_free() + self.num_used(), self.capacity());
    }
}

/// One sequence's blocks, in position order, and how many token slots it has reserved.
///
/// Deliberately not `Clone`: each table holds one reference per block, and a copy would
/// release them twice. Give the blocks back with [`BlockPool::free_table`].
#[derive(Debug, PartialEq, Eq)]
pub struct BlockTable {
    blocks: Vec<BlockId>,
    num_tokens: usize,
    block_size: usize,
}

impl BlockTable {
    /// The blocks, in position order.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Token slots reserved (written, or about to be written this step).
    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    /// Reserved-but-unused slots in the last block.
    pub fn spare_slots(&self) -> usize {
        self.blocks.len() * self.block_size - self.num_tokens
    }

    /// New blocks needed to reserve `new_tokens` more slots.
    pub fn blocks_needed(&self, new_tokens: usize) -> usize {
        (self.num_tokens + new_tokens)
            .div_ceil(self.block_size)
            .saturating_sub(self.blocks.len())
    }

    /// The most new slots that fit with `free_blocks` more blocks.
    pub fn max_new_tokens(&self, free_blocks: usize) -> usize {
        self.spare_slots() + free_blocks * self.block_size
    }

    /// The KV slot of position `pos`, if reserved.
    pub fn slot(&self, pos: usize) -> Option<usize> {
        if pos >= self.num_tokens {
            return None;
        }
        let block = self.blocks.get(pos / self.block_size)?;
        Some(block.index() * self.block_size + pos % self.block_size)
    }

    /// Reserves `new_tokens` more slots, allocating blocks from `pool`; all or nothing:
    /// returns `false` (and changes nothing) when the pool has too few blocks.
    #[must_use]
    pub fn append(&mut self, pool: &mut BlockPool, new_tokens: usize) -> bool {
        let needed = self.blocks_needed(new_tokens);
        if needed > pool.num_free() {
            return false;
        }
        for _ in 0..needed {
            match pool.allocate() {
                Some(id) => self.blocks.push(id),
                None => return false, // unreachable: `num_free` counted them
            }
        }
        self.num_tokens += new_tokens;
        true
    }

    /// Appends a full block the caller already holds a reference to (a prefix-cache
    /// hit); the table then owns that reference.
    pub fn push_full(&mut self, id: BlockId) -> Result<(), PoolError> {
        if self.num_tokens != self.blocks.len() * self.block_size {
            return Err(PoolError::PartialLastBlock(id));
        }
        self.blocks.push(id);
        self.num_tokens += self.block_size;
        Ok(())
    }
}

#[cfg(test)]
#[path = "block_pool_tests.rs"]
mod tests;
