//! The WebSocket wire format (RFC 6455) from the server's side, after the handshake.
//!
//! Owns the bytes of server frames (unmasked, built whole so the hub can write one message's frame
//! to every recipient as is) and the reading of client frames: masks, fragments, control-frame
//! rules, the size cap and UTF-8 checks. The read buffer exists only while a frame is arriving, so
//! an idle connection holds none. It does not touch sockets (`outbox`, `session`) or know what the
//! messages mean (`protocol`).

use bytes::Bytes;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Close code sent when the server shuts down ("going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a frame that breaks the protocol.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code for a text message that is not UTF-8.
pub const CLOSE_BAD_DATA: u16 = 1007;
/// Close code for a client that stopped answering pings (policy violation is the closest fit).
pub const CLOSE_PING_TIMEOUT: u16 = 1008;
/// Close code for a client message over the size cap ("message too big").
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a client whose queue overflowed ("try again later").
pub const CLOSE_TOO_SLOW: u16 = 1013;
/// Close code for a session whose token expired.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;

/// Bytes a read may add to the buffer at a time.
pub const READ_CHUNK: usize = 4096;

/// Longest header a server frame has.
pub const MAX_HEADER: usize = 10;

/// The header of an unmasked, final frame carrying `len` bytes, and its length.
pub fn header(opcode: u8, len: usize) -> ([u8; MAX_HEADER], usize) {
    let mut h = [0u8; MAX_HEADER];
    h[0] = 0x80 | opcode;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if let Ok(short) = u16::try_from(len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&short.to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// A text frame around `out[MAX_HEADER..]`: the caller wrote the payload after [`MAX_HEADER`]
/// reserved bytes, so the header goes in front without copying the payload.
pub fn text_in_place(mut out: Vec<u8>) -> Bytes {
    let (h, n) = header(OP_TEXT, out.len() - MAX_HEADER);
    let start = MAX_HEADER - n;
    out[start..MAX_HEADER].copy_from_slice(&h[..n]);
    Bytes::from(out).slice(start..)
}

/// One whole server frame.
pub fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let (h, n) = header(opcode, payload.len());
    let mut out = Vec::with_capacity(payload.len() + n);
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A text frame.
pub fn text(payload: &str) -> Bytes {
    frame(OP_TEXT, payload.as_bytes())
}

/// A close frame with a code and a reason (cut to fit a control frame).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    frame(OP_CLOSE, &payload)
}

/// A message the client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// The close code the client gave, if any.
    Close(Option<u16>),
}

/// Why the client's frames cannot be read further; the connection ends with [`ReadError::code`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("message of {0} bytes or more is over the size cap")]
    TooBig(usize),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("text message is not UTF-8")]
    NotUtf8,
}

impl ReadError {
    /// The close code that says why.
    pub fn code(&self) -> u16 {
        match self {
            ReadError::TooBig(_) => CLOSE_TOO_BIG,
            ReadError::Protocol(_) => CLOSE_PROTOCOL_ERROR,
            ReadError::NotUtf8 => CLOSE_BAD_DATA,
        }
    }
}

/// Reads client frames out of the bytes the socket delivered.
#[derive(Debug)]
pub struct Reader {
    /// Bytes read and not yet parsed; empty (and unallocated) between frames.
    buf: Vec<u8>,
    /// Where unparsed bytes start in `buf`.
    start: usize,
    /// A fragmented message so far: its opcode and payload.
    partial: Option<(u8, Vec<u8>)>,
    /// Largest message (and frame) accepted, in bytes.
    max: usize,
}

impl Reader {
    pub fn new(max: usize) -> Self {
        Reader {
            buf: Vec::new(),
            start: 0,
            partial: None,
            max,
        }
    }

    /// Bytes the connection already read past the handshake.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The buffer to read into, with room for at least [`READ_CHUNK`] more bytes.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        self.buf.reserve(READ_CHUNK);
        &mut self.buf
    }

    /// Drops parsed bytes, and the buffer itself when nothing is left in it.
    pub fn compact(&mut self) {
        if self.start == self.buf.len() {
            self.buf = Vec::new();
        } else {
            self.buf.drain(..self.start);
        }
        self.start = 0;
    }

    /// The next whole message, if the buffer holds one.
    pub fn message(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            let Some((fin, opcode, payload)) = self.frame()? else {
                return Ok(None);
            };
            if opcode >= OP_CLOSE {
                return Ok(Some(control(opcode, payload)?));
            }
            let (opcode, payload) = match (self.partial.take(), opcode) {
                (None, OP_CONTINUATION) => {
                    return Err(ReadError::Protocol("continuation with nothing to continue"))
                }
                (None, op) => (op, payload),
                (Some(_), OP_TEXT | OP_BINARY) => {
                    return Err(ReadError::Protocol("new message inside a fragmented one"))
                }
                (Some((op, mut so_far)), _) => {
                    if so_far.len() + payload.len() > self.max {
                        return Err(ReadError::TooBig(so_far.len() + payload.len()));
                    }
                    so_far.extend_from_slice(&payload);
                    (op, so_far)
                }
            };
            if !fin {
                self.partial = Some((opcode, payload));
                continue;
            }
            return Ok(Some(match opcode {
                OP_TEXT => {
                    Incoming::Text(String::from_utf8(payload).map_err(|_| ReadError::NotUtf8)?)
                }
                _ => Incoming::Binary(payload),
            }));
        }
    }

    /// The next whole frame, unmasked: (final, opcode, payload).
    fn frame(&mut self) -> Result<Option<(bool, u8, Vec<u8>)>, ReadError> {
        let data = &self.buf[self.start..];
        if data.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (data[0], data[1]);
        if b0 & 0x70 != 0 {
            return Err(ReadError::Protocol(
                "reserved bits set (no extension was agreed)",
            ));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        if !matches!(
            opcode,
            OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
        ) {
            return Err(ReadError::Protocol("unknown opcode"));
        }
        if b1 & 0x80 == 0 {
            return Err(ReadError::Protocol("client frames must be masked"));
        }
        let (len, mut at) = match b1 & 0x7F {
            126 if data.len() >= 4 => (u64::from(u16::from_be_bytes([data[2], data[3]])), 4),
            127 if data.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&data[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        if opcode >= OP_CLOSE && (len > 125 || !fin) {
            return Err(ReadError::Protocol("control frames are short and whole"));
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.max {
            return Err(ReadError::TooBig(len));
        }
        if data.len() < at + 4 + len {
            return Ok(None);
        }
        let mask = [data[at], data[at + 1], data[at + 2], data[at + 3]];
        at += 4;
        let payload: Vec<u8> = data[at..at + len]
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect();
        self.start += at + len;
        Ok(Some((fin, opcode, payload)))
    }
}

fn control(opcode: u8, payload: Vec<u8>) -> Result<Incoming, ReadError> {
    Ok(match opcode {
        OP_PING => Incoming::Ping(payload),
        OP_PONG => Incoming::Pong,
        _ => match payload.len() {
            0 => Incoming::Close(None),
            1 => return Err(ReadError::Protocol("close frame with a one-byte code")),
            _ => {
                if std::str::from_utf8(&payload[2..]).is_err() {
                    return Err(ReadError::NotUtf8);
                }
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                if !sendable(code) {
                    return Err(ReadError::Protocol("close code that may not be sent"));
                }
                Incoming::Close(Some(code))
            }
        },
    })
}

/// Whether an endpoint may put `code` in a close frame (RFC 6455 §7.4: the defined codes, minus
/// 1004-1006 and 1015, and the ranges for libraries and applications).
fn sendable(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xFFFF {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        out
    }

    #[test]
    fn reads_masked_messages_split_anywhere() {
        let mut bytes = client_frame(true, OP_TEXT, "héllo".as_bytes());
        bytes.extend(client_frame(true, OP_PING, b"p"));
        bytes.extend(client_frame(true, OP_BINARY, &vec![7u8; 70_000]));
        let mut reader = Reader::new(100_000);
        let mut got = Vec::new();
        for chunk in bytes.chunks(3) {
            reader.extend(chunk);
            while let Some(m) = reader.message().expect("valid") {
                got.push(m);
            }
            reader.compact();
        }
        assert_eq!(got[0], Incoming::Text("héllo".into()));
        assert_eq!(got[1], Incoming::Ping(b"p".to_vec()));
        assert_eq!(got[2], Incoming::Binary(vec![7u8; 70_000]));
        assert_eq!(reader.buf.capacity(), 0, "no buffer kept between messages");
    }

    #[test]
    fn joins_fragments_with_control_frames_between() {
        let mut reader = Reader::new(1024);
        reader.extend(&client_frame(false, OP_TEXT, b"ab"));
        reader.extend(&client_frame(true, OP_PONG, b""));
        reader.extend(&client_frame(true, OP_CONTINUATION, b"cd"));
        assert_eq!(reader.message(), Ok(Some(Incoming::Pong)));
        assert_eq!(reader.message(), Ok(Some(Incoming::Text("abcd".into()))));
        assert_eq!(reader.message(), Ok(None));
    }

    #[test]
    fn refuses_what_the_protocol_forbids() {
        let cases: Vec<(Vec<u8>, ReadError)> = vec![
            (
                vec![0x81, 0x01, b'a'],
                ReadError::Protocol("client frames must be masked"),
            ),
            (
                client_frame(true, 0x3, b""),
                ReadError::Protocol("unknown opcode"),
            ),
            (
                client_frame(false, OP_PING, b""),
                ReadError::Protocol("control frames are short and whole"),
            ),
            (
                client_frame(true, OP_CONTINUATION, b"x"),
                ReadError::Protocol("continuation with nothing to continue"),
            ),
            (
                client_frame(true, OP_TEXT, &[0xFF, 0xFE]),
                ReadError::NotUtf8,
            ),
            (
                client_frame(true, OP_BINARY, &[0; 11]),
                ReadError::TooBig(11),
            ),
        ];
        for (bytes, want) in cases {
            let mut reader = Reader::new(10);
            reader.extend(&bytes);
            assert_eq!(reader.message(), Err(want));
        }
        // Fragments that add up past the cap.
        let mut reader = Reader::new(10);
        reader.extend(&client_frame(false, OP_TEXT, b"123456"));
        reader.extend(&client_frame(true, OP_CONTINUATION, b"789012"));
        assert_eq!(reader.message(), Err(ReadError::TooBig(12)));
        // A huge declared length is refused from its header, before any payload arrives.
        let mut reader = Reader::new(10);
        reader.extend(&[0x82, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert!(matches!(reader.message(), Err(ReadError::TooBig(_))));
    }

    #[test]
    fn close_codes_and_server_frames() {
        let mut reader = Reader::new(1024);
        reader.extend(&client_frame(
            true,
            OP_CLOSE,
            &[0x03, 0xE8, b'b', b'y', b'e'],
        ));
        assert_eq!(reader.message(), Ok(Some(Incoming::Close(Some(1000)))));
        for bad in [999u16, 1005, 1006, 1015, 2000, 5000] {
            let mut reader = Reader::new(1024);
            reader.extend(&client_frame(true, OP_CLOSE, &bad.to_be_bytes()));
            assert!(
                matches!(reader.message(), Err(ReadError::Protocol(_))),
                "{bad}"
            );
        }
        assert_eq!(
            &close(1013, "slow")[..],
            &[0x88, 6, 0x03, 0xF5, b's', b'l', b'o', b'w']
        );
        let long = frame(OP_TEXT, &[b'x'; 300]);
        assert_eq!(&long[..4], &[0x81, 126, 0x01, 0x2C]);
        assert_eq!(long.len(), 304);
        assert!(close(1000, &"é".repeat(100)).len() <= 127);
    }
}
