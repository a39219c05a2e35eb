//! The host side of a step's [`super::AttentionRows`]: where each row reads and writes in
//! the block pool, which rows are decode rows, which form prefill tiles, and the decode
//! kernel's split rule. Plain host code, so it is tested here without a GPU.

use super::i32_of;
use super::{Padding, MAX_SPLITS, PREFILL_TILE_ROWS, SPLIT_KEYS};
use crate::error::{ensure, CudaError};

const OP: &str = "paged_attention";

/// One step's rows as the attention kernels read them, before the upload.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct HostRows {
    pub(crate) positions: Vec<i32>,
    pub(crate) table_off: Vec<i32>,
    pub(crate) tables: Vec<i32>,
    pub(crate) slots: Vec<i32>,
    pub(crate) decode_rows: Vec<i32>,
    pub(crate) tile_first: Vec<i32>,
    pub(crate) tile_rows: Vec<i32>,
}

impl HostRows {
    /// Rows of sequences given as (first position, new tokens, block table), padded with
    /// decode rows of position 0 in `padding.trash_block` when given.
    pub(crate) fn build(
        seqs: &[(usize, usize, &[u32])],
        block_size: usize,
        num_blocks: usize,
        padding: Option<Padding>,
    ) -> Result<Self, CudaError> {
        let mut h = HostRows::default();
        for &(start, tokens, table) in seqs {
            h.push_seq(start, tokens, table, block_size, num_blocks)?;
        }
        if let Some(pad) = padding {
            h.pad(pad, block_size)?;
        }
        Ok(h)
    }

    /// Appends one row per new token of a sequence; one new token makes a decode row,
    /// more make prefill tiles of [`PREFILL_TILE_ROWS`].
    fn push_seq(
        &mut self,
        start: usize,
        tokens: usize,
        table: &[u32],
        block_size: usize,
        num_blocks: usize,
    ) -> Result<(), CudaError> {
        ensure(table.len() * block_size >= start + tokens, OP, || {
            format!(
                "a table of {} blocks cannot hold {} positions",
                table.len(),
                start + tokens
            )
        })?;
        ensure(table.iter().all(|&b| (b as usize) < num_blocks), OP, || {
            format!("a block id is not below {num_blocks}")
        })?;
        let off = i32_of(OP, self.tables.len())?;
        self.tables.extend(table.iter().map(|&b| b as i32));
        let first_row = self.positions.len();
        for p in start..start + tokens {
            self.positions.push(i32_of(OP, p)?);
            self.table_off.push(off);
            let slot = table[p / block_size] as usize * block_size + p % block_size;
            self.slots.push(i32_of(OP, slot)?);
        }
        if tokens == 1 {
            self.decode_rows.push(i32_of(OP, first_row)?);
        } else {
            for t0 in (0..tokens).step_by(PREFILL_TILE_ROWS) {
                self.tile_first.push(i32_of(OP, first_row + t0)?);
                self.tile_rows
                    .push(PREFILL_TILE_ROWS.min(tokens - t0) as i32);
            }
        }
        Ok(())
    }

    /// Pads to `pad.rows` with decode rows at position 0 of the trash block.
    fn pad(&mut self, pad: Padding, block_size: usize) -> Result<(), CudaError> {
        ensure(pad.rows >= self.positions.len(), OP, || {
            format!(
                "{} rows do not fit a padding of {}",
                self.positions.len(),
                pad.rows
            )
        })?;
        let off = i32_of(OP, self.tables.len())?;
        self.tables.push(pad.trash_block as i32);
        let slot = i32_of(OP, pad.trash_block as usize * block_size)?;
        while self.positions.len() < pad.rows {
            self.decode_rows.push(self.positions.len() as i32);
            self.positions.push(0);
            self.table_off.push(off);
            self.slots.push(slot);
        }
        Ok(())
    }

    /// The decode kernel's (splits, keys per split): splits of [`SPLIT_KEYS`] keys for the
    /// longest decode row, rounded up to a power of two; past [`MAX_SPLITS`] the splits
    /// grow longer instead, so the partials stay bounded for long contexts. (0, shortest)
    /// without decode rows.
    pub(crate) fn splits(&self) -> (usize, usize) {
        let longest = self
            .decode_rows
            .iter()
            .map(|&r| self.positions[r as usize] as usize + 1)
            .max();
        let Some(longest) = longest else {
            return (0, SPLIT_KEYS);
        };
        let wanted = longest.div_ceil(SPLIT_KEYS).max(1).next_power_of_two();
        if wanted <= MAX_SPLITS {
            (wanted, SPLIT_KEYS)
        } else {
            (MAX_SPLITS, SPLIT_KEYS * (wanted / MAX_SPLITS))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_tiles_and_slots_follow_the_block_tables() {
        // A 20-token prompt (two tiles: 16 + 4) and a decode row at position 5.
        let a: Vec<u32> = vec![3, 1];
        let b: Vec<u32> = vec![2];
        let h = HostRows::build(&[(0, 20, &a), (5, 1, &b)], 16, 4, None).unwrap();
        assert_eq!(h.positions.len(), 21);
        assert_eq!(h.tables, vec![3, 1, 2]);
        assert_eq!(h.table_off[..20], [0; 20]);
        assert_eq!(h.table_off[20], 2);
        assert_eq!(h.slots[0], 48); // block 3, offset 0
        assert_eq!(h.slots[17], 16 + 1); // position 17: block 1, offset 1
        assert_eq!(h.slots[20], 2 * 16 + 5);
        assert_eq!((h.tile_first, h.tile_rows), (vec![0, 16], vec![16, 4]));
        assert_eq!(h.decode_rows, vec![20]);
    }

    #[test]
    fn padding_adds_decode_rows_in_the_trash_block() {
        let t: Vec<u32> = vec![0];
        let pad = Padding {
            rows: 4,
            trash_block: 7,
        };
        let h = HostRows::build(&[(2, 1, &t)], 8, 8, Some(pad)).unwrap();
        assert_eq!(h.decode_rows, vec![0, 1, 2, 3]);
        assert_eq!(h.positions, vec![2, 0, 0, 0]);
        assert_eq!(h.slots, vec![2, 56, 56, 56]);
        assert_eq!(h.table_off, vec![0, 1, 1, 1]);
        assert_eq!(h.tables, vec![0, 7]);
        let small = Padding {
            rows: 0,
            trash_block: 7,
        };
        assert!(HostRows::build(&[(2, 1, &t)], 8, 8, Some(small)).is_err());
    }

    #[test]
    fn bad_tables_are_refused() {
        let short: Vec<u32> = vec![0];
        assert!(HostRows::build(&[(8, 1, &short)], 8, 4, None).is_err());
        let outside: Vec<u32> = vec![4];
        assert!(HostRows::build(&[(0, 1, &outside)], 8, 4, None).is_err());
    }

    #[test]
    fn splits_double_with_the_longest_decode_row_then_lengthen() {
        let split = |pos: usize| {
            let t: Vec<u32> = (0..(pos / 16 + 1) as u32).collect();
            HostRows::build(&[(pos, 1, &t)], 16, t.len(), None)
                .unwrap()
                .splits()
        };
        assert_eq!(split(0), (1, SPLIT_KEYS));
        assert_eq!(split(SPLIT_KEYS), (2, SPLIT_KEYS));
        assert_eq!(split(3 * SPLIT_KEYS - 1), (4, SPLIT_KEYS));
        let long = MAX_SPLITS * SPLIT_KEYS * 2;
        assert_eq!(split(long - 1), (MAX_SPLITS, 2 * SPLIT_KEYS));
        let prompt: Vec<u32> = vec![0, 1];
        let h = HostRows::build(&[(0, 20, &prompt)], 16, 2, None).unwrap();
        assert_eq!(h.splits(), (0, SPLIT_KEYS));
    }
}
