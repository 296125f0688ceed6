//! The forwarding protocol's messages, encoded as bytes (NATS payloads).
//!
//! Every message is `version byte || fields || body bytes`. Strings and byte strings
//! are length-prefixed (u32, big endian); the body is the rest of the payload. HTTP
//! heads travel in the payload, not as NATS headers, so any header value HTTP allows
//! (also non-UTF-8) arrives unchanged.
//!
//! - [`Ask`]: caller → `wasmhive.<lattice>.rpc.<app>.<component>` (a NATS request).
//! - [`Answer`]: the reply to an `Ask`: the response head and its first piece of body.
//! - [`Piece`]: the reply to a pull (an empty request on a pull subject): the next
//!   piece of a body, and whether it is the last.
//!
//! A body that did not fit in its first message is pulled piece by piece from the
//! subject named in the message (`pull`), one piece in flight: the receiver asks when
//! it wants more, so neither side ever holds more than one piece of the other's body.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Protocol version; a host refuses messages of another version.
pub const VERSION: u8 = 1;

/// Largest piece of body in one message (well under NATS's default 1 MiB payload).
pub const PIECE: usize = 256 * 1024;

/// Which trigger a forwarded invocation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A client's request that arrived at another host's gateway.
    Http = 0,
    /// A service call from a component on another host.
    Mesh = 1,
}

/// A forwarded invocation.
#[derive(Debug)]
pub struct Ask {
    /// Gateway request or service call.
    pub kind: Kind,
    /// Milliseconds the caller waits for the answer's head.
    pub deadline_ms: u32,
    /// Where to pull the rest of the request body (empty: `body` is all of it).
    pub pull: String,
    /// The request head.
    pub method: String,
    /// Absolute URI.
    pub uri: String,
    /// Header names and values.
    pub headers: Vec<(String, Bytes)>,
    /// The request body (or its first piece).
    pub body: Bytes,
}

/// How a forwarded invocation ended, as the caller must know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The component answered (any status).
    Answered = 0,
    /// The invocation's deadline passed.
    Timeout = 1,
    /// Not admitted (shed, stopped, pool exhausted): another attempt may succeed.
    Unavailable = 2,
}

/// The answer to an [`Ask`].
#[derive(Debug)]
pub struct Answer {
    /// How it ended.
    pub outcome: Outcome,
    /// Response status.
    pub status: u16,
    /// Where to pull the rest of the response body (empty: `body` is all of it).
    pub pull: String,
    /// Response headers.
    pub headers: Vec<(String, Bytes)>,
    /// The response body (or its first piece).
    pub body: Bytes,
}

/// One piece of a body, the reply to a pull.
#[derive(Debug)]
pub struct Piece {
    /// The last piece (the body ends after it).
    pub last: bool,
    /// The body failed here (the sender's side broke off).
    pub failed: bool,
    /// The bytes.
    pub data: Bytes,
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
#[error("malformed lattice message: {0}")]
pub struct Malformed(&'static str);

fn put_str(out: &mut BytesMut, s: &[u8]) {
    out.put_u32(s.len() as u32);
    out.put_slice(s);
}

fn put_headers(out: &mut BytesMut, headers: &[(String, Bytes)]) {
    out.put_u32(headers.len() as u32);
    for (k, v) in headers {
        put_str(out, k.as_bytes());
        put_str(out, v);
    }
}

struct Reader(Bytes);

impl Reader {
    fn u8(&mut self) -> Result<u8, Malformed> {
        if self.0.remaining() < 1 {
            return Err(Malformed("truncated"));
        }
        Ok(self.0.get_u8())
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        if self.0.remaining() < 2 {
            return Err(Malformed("truncated"));
        }
        Ok(self.0.get_u16())
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        if self.0.remaining() < 4 {
            return Err(Malformed("truncated"));
        }
        Ok(self.0.get_u32())
    }

    fn bytes(&mut self) -> Result<Bytes, Malformed> {
        let n = self.u32()? as usize;
        if self.0.remaining() < n {
            return Err(Malformed("truncated"));
        }
        Ok(self.0.split_to(n))
    }

    fn string(&mut self) -> Result<String, Malformed> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| Malformed("not UTF-8"))
    }

    fn headers(&mut self) -> Result<Vec<(String, Bytes)>, Malformed> {
        let n = self.u32()? as usize;
        // Each header takes at least 8 bytes: a count past that is a lie.
        if n > self.0.remaining() / 8 {
            return Err(Malformed("header count"));
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push((self.string()?, self.bytes()?));
        }
        Ok(out)
    }

    fn version(&mut self) -> Result<(), Malformed> {
        if self.u8()? != VERSION {
            return Err(Malformed("unknown protocol version"));
        }
        Ok(())
    }
}

impl Ask {
    /// The payload.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64 + self.uri.len() + self.body.len());
        out.put_u8(VERSION);
        out.put_u8(self.kind as u8);
        out.put_u32(self.deadline_ms);
        put_str(&mut out, self.pull.as_bytes());
        put_str(&mut out, self.method.as_bytes());
        put_str(&mut out, self.uri.as_bytes());
        put_headers(&mut out, &self.headers);
        out.put_slice(&self.body);
        out.freeze()
    }

    /// Reads a payload.
    pub fn decode(payload: Bytes) -> Result<Ask, Malformed> {
        let mut r = Reader(payload);
        r.version()?;
        let kind = match r.u8()? {
            0 => Kind::Http,
            1 => Kind::Mesh,
            _ => return Err(Malformed("kind")),
        };
        Ok(Ask {
            kind,
            deadline_ms: r.u32()?,
            pull: r.string()?,
            method: r.string()?,
            uri: r.string()?,
            headers: r.headers()?,
            body: r.0,
        })
    }
}

impl Answer {
    /// The payload.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64 + self.body.len());
        out.put_u8(VERSION);
        out.put_u8(self.outcome as u8);
        out.put_u16(self.status);
        put_str(&mut out, self.pull.as_bytes());
        put_headers(&mut out, &self.headers);
        out.put_slice(&self.body);
        out.freeze()
    }

    /// Reads a payload.
    pub fn decode(payload: Bytes) -> Result<Answer, Malformed> {
        let mut r = Reader(payload);
        r.version()?;
        let outcome = match r.u8()? {
            0 => Outcome::Answered,
            1 => Outcome::Timeout,
            2 => Outcome::Unavailable,
            _ => return Err(Malformed("outcome")),
        };
        Ok(Answer {
            outcome,
            status: r.u16()?,
            pull: r.string()?,
            headers: r.headers()?,
            body: r.0,
        })
    }
}

impl Piece {
    /// The payload.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(2 + self.data.len());
        out.put_u8(VERSION);
        out.put_u8(u8::from(self.last) | (u8::from(self.failed) << 1));
        out.put_slice(&self.data);
        out.freeze()
    }

    /// Reads a payload.
    pub fn decode(payload: Bytes) -> Result<Piece, Malformed> {
        let mut r = Reader(payload);
        r.version()?;
        let flags = r.u8()?;
        Ok(Piece {
            last: flags & 1 != 0,
            failed: flags & 2 != 0,
            data: r.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let ask = Ask {
            kind: Kind::Mesh,
            deadline_ms: 1500,
            pull: "_INBOX.x".into(),
            method: "POST".into(),
            uri: "http://users/v1/users?x=1".into(),
            headers: vec![("x-bin".into(), Bytes::from_static(b"\xff\x00ok"))],
            body: Bytes::from_static(b"hello"),
        };
        let back = Ask::decode(ask.encode()).unwrap();
        assert_eq!(back.kind, Kind::Mesh);
        assert_eq!(back.deadline_ms, 1500);
        assert_eq!(back.pull, "_INBOX.x");
        assert_eq!(back.uri, ask.uri);
        assert_eq!(back.headers, ask.headers);
        assert_eq!(back.body, ask.body);

        let answer = Answer {
            outcome: Outcome::Unavailable,
            status: 503,
            pull: String::new(),
            headers: vec![],
            body: Bytes::new(),
        };
        let back = Answer::decode(answer.encode()).unwrap();
        assert_eq!((back.outcome, back.status), (Outcome::Unavailable, 503));

        let p = Piece::decode(
            Piece {
                last: true,
                failed: false,
                data: Bytes::from_static(b"z"),
            }
            .encode(),
        )
        .unwrap();
        assert!(p.last && !p.failed && p.data == "z");
    }

    #[test]
    fn hostile_payloads_are_refused_not_panicked_on() {
        let good = Ask {
            kind: Kind::Http,
            deadline_ms: 1,
            pull: String::new(),
            method: "GET".into(),
            uri: "/".into(),
            headers: vec![("a".into(), Bytes::from_static(b"b"))],
            body: Bytes::new(),
        }
        .encode();
        for cut in 0..good.len() {
            let _ = Ask::decode(good.slice(..cut));
        }
        let mut lying = BytesMut::new();
        lying.put_u8(VERSION);
        lying.put_u8(0);
        lying.put_u32(1);
        put_str(&mut lying, b"");
        put_str(&mut lying, b"GET");
        put_str(&mut lying, b"/");
        lying.put_u32(u32::MAX);
        assert!(Ask::decode(lying.freeze()).is_err());
        assert!(Ask::decode(Bytes::from_static(&[9, 0])).is_err());
    }
}
