//! A run's output: what it writes on stdout and stderr, kept bounded (the last
//! [`KEPT`] bytes of each) for its history entry, and passed on as it is written to
//! whoever follows the run (`wasmhive run`, `?follow=1`).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::capability::wasi::OutputSink;

/// Bytes of each stream kept in the history (the last ones).
pub const KEPT: usize = 32 * 1024;

/// Chunks buffered for a follower that reads slower than the guest writes (at most
/// 16 KiB each: 4 MiB); a follower further behind is told how many it lost.
const FOLLOW_BUFFER: usize = 256;

/// Which stream a chunk was written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// stdout
    Stdout,
    /// stderr
    Stderr,
}

/// One write of the guest.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Where it was written.
    pub stream: Stream,
    /// What.
    pub data: Bytes,
}

/// The last bytes of one stream, and how many were written in all.
#[derive(Debug, Default, Clone)]
pub struct Tail {
    buf: Vec<u8>,
    total: u64,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        if bytes.len() >= KEPT {
            self.buf.clear();
            self.buf.extend_from_slice(&bytes[bytes.len() - KEPT..]);
            return;
        }
        let over = (self.buf.len() + bytes.len()).saturating_sub(KEPT);
        if over > 0 {
            self.buf.drain(..over);
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The kept bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes written in all.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// A run's output.
pub struct Output {
    tails: Mutex<(Tail, Tail)>,
    follow: broadcast::Sender<Chunk>,
}

impl Default for Output {
    fn default() -> Self {
        Output {
            tails: Mutex::default(),
            follow: broadcast::channel(FOLLOW_BUFFER).0,
        }
    }
}

impl Output {
    /// Receives what is written from now on.
    pub fn follow(&self) -> broadcast::Receiver<Chunk> {
        self.follow.subscribe()
    }

    /// The tails of stdout and stderr.
    pub fn tails(&self) -> (Tail, Tail) {
        self.tails.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn write(&self, stream: Stream, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        {
            let mut tails = self.tails.lock().unwrap_or_else(|e| e.into_inner());
            match stream {
                Stream::Stdout => tails.0.push(bytes),
                Stream::Stderr => tails.1.push(bytes),
            }
        }
        // No follower is fine.
        let _ = self.follow.send(Chunk {
            stream,
            data: Bytes::copy_from_slice(bytes),
        });
    }

    /// The sink of `stream`, for the run's WASI context.
    pub fn sink(self: &Arc<Self>, stream: Stream) -> Arc<dyn OutputSink> {
        Arc::new(Sink {
            output: self.clone(),
            stream,
        })
    }
}

struct Sink {
    output: Arc<Output>,
    stream: Stream,
}

impl OutputSink for Sink {
    fn write(&self, bytes: &[u8]) {
        self.output.write(self.stream, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_last_bytes() {
        let mut t = Tail::default();
        t.push(&vec![b'a'; KEPT - 1]);
        t.push(b"bc");
        assert_eq!(t.bytes().len(), KEPT);
        assert!(t.bytes().ends_with(b"abc"));
        assert_eq!(t.total(), KEPT as u64 + 1);
        t.push(&vec![b'z'; KEPT * 2]);
        assert_eq!(t.bytes(), &vec![b'z'; KEPT][..]);
    }

    #[tokio::test]
    async fn followers_see_writes_in_order() {
        let out = Arc::new(Output::default());
        let mut rx = out.follow();
        out.sink(Stream::Stdout).write(b"one");
        out.sink(Stream::Stderr).write(b"two");
        let a = rx.recv().await.unwrap();
        let b = rx.recv().await.unwrap();
        assert_eq!((a.stream, &a.data[..]), (Stream::Stdout, &b"one"[..]));
        assert_eq!((b.stream, &b.data[..]), (Stream::Stderr, &b"two"[..]));
        assert_eq!(out.tails().1.bytes(), b"two");
    }
}
