//! The CRI log: `<RFC3339Nano> <stream> <P|F> <text>` per line, as the kubelet reads it. A
//! line longer than [`MAX_LINE`] is cut into partial (`P`) pieces; the last piece of a
//! line is full (`F`).

use std::{fs::File, io::Write, path::Path};

/// A CRI log line longer than this is split and marked partial.
pub const MAX_LINE: usize = 16 << 10;

/// Splits one stream's bytes into CRI log lines as they arrive.
#[derive(Debug, Default)]
pub struct Splitter {
    pending: Vec<u8>,
}

impl Splitter {
    /// Takes `bytes`; calls `line(partial, text)` for every line (or piece) complete.
    pub fn push(&mut self, bytes: &[u8], line: &mut dyn FnMut(bool, &[u8])) {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(pos) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let mut text = &self.pending[start..start + pos];
            while text.len() > MAX_LINE {
                line(true, &text[..MAX_LINE]);
                text = &text[MAX_LINE..];
            }
            line(false, text);
            start += pos + 1;
        }
        self.pending.drain(..start);
        while self.pending.len() >= MAX_LINE {
            let part: Vec<u8> = self.pending.drain(..MAX_LINE).collect();
            line(true, &part);
        }
    }

    /// The stream ended: what is left is a last (full) line.
    pub fn finish(&mut self, line: &mut dyn FnMut(bool, &[u8])) {
        if !self.pending.is_empty() {
            line(false, &std::mem::take(&mut self.pending));
        }
    }
}

/// The log file (reopened when the kubelet rotates it).
pub struct CriLog {
    file: Option<File>,
}

impl CriLog {
    pub fn open(path: &Path) -> CriLog {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        CriLog {
            file: File::options().create(true).append(true).open(path).ok(),
        }
    }

    pub fn line(&mut self, stream: &str, partial: bool, text: &[u8]) {
        let Some(file) = &mut self.file else { return };
        let _ = file.write_all(&format_line(
            &crate::clock::rfc3339_nano(std::time::SystemTime::now()),
            stream,
            partial,
            text,
        ));
    }
}

fn format_line(time: &str, stream: &str, partial: bool, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 48);
    out.extend_from_slice(time.as_bytes());
    out.extend_from_slice(format!(" {stream} {} ", if partial { "P" } else { "F" }).as_bytes());
    out.extend_from_slice(text);
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<(bool, Vec<u8>)> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut |p, t| out.push((p, t.to_vec())));
        }
        s.finish(&mut |p, t| out.push((p, t.to_vec())));
        out
    }

    #[test]
    fn lines_are_cut_at_newlines_across_reads() {
        assert_eq!(
            split(&[b"hel", b"lo\nwor", b"ld\n\nlast"]),
            vec![
                (false, b"hello".to_vec()),
                (false, b"world".to_vec()),
                (false, b"".to_vec()),
                (false, b"last".to_vec()),
            ]
        );
        assert!(split(&[b""]).is_empty());
    }

    #[test]
    fn long_lines_become_partial_pieces_and_a_full_end() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let mut input = long.clone();
        input.push(b'\n');
        let out = split(&[&input]);
        assert_eq!(out.len(), 3);
        assert_eq!((out[0].0, out[0].1.len()), (true, MAX_LINE));
        assert_eq!((out[1].0, out[1].1.len()), (true, MAX_LINE));
        assert_eq!((out[2].0, out[2].1.len()), (false, 10));
        // Without a newline yet, a full-size piece goes out as soon as it is there.
        let out = split(&[&long[..MAX_LINE + 1]]);
        assert_eq!((out[0].0, out[0].1.len()), (true, MAX_LINE));
        assert_eq!((out[1].0, out[1].1.len()), (false, 1));
        // Exactly MAX_LINE then a newline, in one read: one full line.
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        let out = split(&[&exact]);
        assert_eq!(
            out.len(),
            1,
            "{:?}",
            out.iter().map(|(p, t)| (p, t.len())).collect::<Vec<_>>()
        );
        assert_eq!((out[0].0, out[0].1.len()), (false, MAX_LINE));
    }

    #[test]
    fn the_line_format_is_the_cri_one() {
        assert_eq!(
            format_line("2026-01-02T03:04:05.000000006Z", "stderr", true, b"a b"),
            b"2026-01-02T03:04:05.000000006Z stderr P a b\n"
        );
    }
}
