//! Byte offsets (what toml's spans give) to `file:line:column` positions.

use std::path::Path;

use super::Diagnostic;

/// The text of a configuration file and where it came from.
pub(super) struct Source<'a> {
    text: &'a str,
    origin: &'a Path,
    /// Byte offset at which each line starts.
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    pub(super) fn new(text: &'a str, origin: &'a Path) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            text,
            origin,
            line_starts,
        }
    }

    /// 1-based line and column (in characters) of a byte offset. Offsets past
    /// the end or inside a character are clamped to a character boundary.
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        let column = self.text[start..offset].chars().count() + 1;
        (line, column)
    }

    pub(super) fn diagnostic(&self, offset: usize, message: impl Into<String>) -> Diagnostic {
        let (line, column) = self.position(offset);
        Diagnostic {
            file: self.origin.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }
}
