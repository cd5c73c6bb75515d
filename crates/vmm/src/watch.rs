//! Reading a guest console as it streams by: kernel panics (found in whole lines, however
//! the output is cut into chunks) and vireo's /init start marker (which may straddle two
//! chunks). `vireo run`'s console thread and the VMM's both use it.

/// The line a guest kernel prints when it panics.
const PANIC: &str = "Kernel panic - not syncing";
/// The line that ends a panic's report: from here the kernel spins (without `panic=-1`).
const PANIC_END: &str = "---[ end Kernel panic";
/// The longest line kept; a guest printing without newlines costs no more than this.
const LINE_MAX: usize = 512;

/// What one chunk of console output showed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// The first panic line of this boot, the first time it is seen.
    pub panic: Option<String>,
    /// The panic report ended: the guest will not go on.
    pub panic_ended: bool,
    /// vireo's /init start marker went by.
    pub marker: bool,
}

/// Keeps what a chunk boundary may cut: the current line, and the end of the last chunk.
#[derive(Default)]
pub struct ConsoleWatch {
    line: Vec<u8>,
    tail: Vec<u8>,
    panicked: bool,
}

impl ConsoleWatch {
    /// A new boot: a new panic may be reported.
    pub fn rearm(&mut self) {
        *self = ConsoleWatch::default();
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Seen {
        let mut seen = Seen {
            marker: self.marker_in(chunk),
            ..Seen::default()
        };
        for &b in chunk {
            if b == b'\n' {
                let s = String::from_utf8_lossy(&self.line);
                if !self.panicked && s.contains(PANIC) {
                    self.panicked = true;
                    seen.panic = Some(s.trim().to_string());
                }
                seen.panic_ended |= s.contains(PANIC_END);
                self.line.clear();
            } else if self.line.len() < LINE_MAX {
                self.line.push(b);
            }
        }
        seen
    }

    /// Whether the marker is in `chunk` or starts in the last one's end; only the bytes a
    /// boundary can cut are copied.
    fn marker_in(&mut self, chunk: &[u8]) -> bool {
        let marker = vireo_image::START_MARKER;
        let keep = marker.len() - 1;
        let mut edge = std::mem::take(&mut self.tail);
        edge.extend_from_slice(&chunk[..chunk.len().min(keep)]);
        let found = contains(&edge, marker) || contains(chunk, marker);
        if chunk.len() >= keep {
            self.tail = chunk[chunk.len() - keep..].to_vec();
        } else {
            let start = edge.len().saturating_sub(keep);
            self.tail = edge[start..].to_vec();
        }
        found
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_marker_is_found_across_chunks() {
        let m = vireo_image::START_MARKER;
        for split in 0..=m.len() {
            let mut w = ConsoleWatch::default();
            let mut first = b"boot log ".to_vec();
            first.extend_from_slice(&m[..split]);
            let mut second = m[split..].to_vec();
            second.extend_from_slice(b"\r\n# ");
            assert!(
                w.feed(&first).marker | w.feed(&second).marker,
                "split at {split}"
            );
        }
        // Byte by byte too (chunks shorter than the marker).
        let mut w = ConsoleWatch::default();
        assert!(m.iter().any(|b| w.feed(&[*b]).marker));
        let mut w = ConsoleWatch::default();
        assert!(!w.feed(b"no marker here").marker && !w.feed(&m[..m.len() - 1]).marker);
    }

    #[test]
    fn a_panic_cut_across_chunks_is_found_once() {
        let mut w = ConsoleWatch::default();
        assert_eq!(w.feed(b"[ 1.0] Kernel pan"), Seen::default());
        let s = w.feed(b"ic - not syncing: VFS: unable to mount\n[ 1.1] ---[ end Kern");
        assert_eq!(
            s.panic.as_deref(),
            Some("[ 1.0] Kernel panic - not syncing: VFS: unable to mount")
        );
        assert!(!s.panic_ended);
        let s = w.feed(b"el panic ]---\nKernel panic - not syncing: again\n");
        assert!(s.panic_ended && s.panic.is_none(), "{s:?}");
        w.rearm();
        assert!(w
            .feed(b"Kernel panic - not syncing: next boot\n")
            .panic
            .is_some());
        // A guest printing without newlines keeps only a bounded line.
        w.feed(&vec![b'x'; 1 << 20]);
        assert!(w.line.len() <= LINE_MAX);
    }
}
