//! Incremental detokenization: generated ids in, text deltas out, never half a character.

use tessera_model::TextTokenizer;

/// Turns generated ids into text deltas without splitting a UTF-8 character.
///
/// It decodes a window from `prefix_offset` twice, without and with the ids after
/// `read_offset`, and emits the difference once it ends on a whole character; the window
/// then slides forward, so each push decodes only a few ids.
#[derive(Debug, Default)]
pub(crate) struct Detokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl Detokenizer {
    /// Appends `id` and returns the text that became final with it (possibly empty).
    pub(crate) fn push(&mut self, tok: &TextTokenizer, id: u32) -> String {
        self.ids.push(id);
        let prefix = tok
            .decode(&self.ids[self.prefix_offset..self.read_offset], false)
            .unwrap_or_default();
        let full = tok
            .decode(&self.ids[self.prefix_offset..], false)
            .unwrap_or_default();
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            delta
        } else {
            String::new()
        }
    }
}
