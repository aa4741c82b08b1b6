//! What the daemon sends a terminal exec on its stdin, after the container's directory: the
//! client's input, window sizes and the end of the input, each as one frame (a kind byte, a
//! 32-bit big-endian length, the payload). A terminal has one byte stream, so the window
//! size cannot ride beside the input as a stream of its own.

/// Most bytes in one frame.
pub const MAX_FRAME: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtyInput {
    Data(Vec<u8>),
    /// Columns and rows.
    Resize {
        cols: u16,
        rows: u16,
    },
    /// The client's input ended.
    End,
}

impl TtyInput {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload) = match self {
            TtyInput::Data(data) => (0u8, data.clone()),
            TtyInput::Resize { cols, rows } => {
                (1, [cols.to_be_bytes(), rows.to_be_bytes()].concat())
            }
            TtyInput::End => (2, Vec::new()),
        };
        let mut out = Vec::with_capacity(5 + payload.len());
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// The next whole frame at the front of `buf` (consumed), `Ok(None)` until more bytes
    /// arrive; an error for a frame that is no frame.
    pub fn decode(buf: &mut Vec<u8>) -> Result<Option<TtyInput>, String> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_FRAME {
            return Err(format!("a terminal input frame of {len} bytes"));
        }
        if buf.len() < 5 + len {
            return Ok(None);
        }
        let kind = buf[0];
        let payload: Vec<u8> = buf.drain(..5 + len).skip(5).collect();
        match (kind, payload.len()) {
            (0, _) => Ok(Some(TtyInput::Data(payload))),
            (1, 4) => Ok(Some(TtyInput::Resize {
                cols: u16::from_be_bytes([payload[0], payload[1]]),
                rows: u16::from_be_bytes([payload[2], payload[3]]),
            })),
            (2, 0) => Ok(Some(TtyInput::End)),
            (kind, len) => Err(format!(
                "a terminal input frame of kind {kind}, {len} bytes"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TtyInput;

    #[test]
    fn frames_round_trip_across_reads() {
        let all = [
            TtyInput::Data(b"ls -l\n".to_vec()),
            TtyInput::Resize {
                cols: 120,
                rows: 40,
            },
            TtyInput::Data(vec![]),
            TtyInput::End,
        ];
        let wire: Vec<u8> = all.iter().flat_map(TtyInput::encode).collect();
        let (mut buf, mut out) = (Vec::new(), Vec::new());
        for byte in wire {
            buf.push(byte);
            while let Some(frame) = TtyInput::decode(&mut buf).unwrap() {
                out.push(frame);
            }
        }
        assert_eq!(out, all);
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_frames_are_errors() {
        for bad in [
            vec![1, 0, 0, 0, 3, 0, 0, 0],
            vec![2, 0, 0, 0, 1, 9],
            vec![7, 0, 0, 0, 0],
            vec![0, 0xff, 0xff, 0xff, 0xff],
        ] {
            let mut buf = bad.clone();
            assert!(TtyInput::decode(&mut buf).is_err(), "{bad:?}");
        }
    }
}
