//! One WebSocket client's sending side: whole frames into its socket, in order, without a task
//! switch when the socket can take them.
//!
//! Owns the socket and the frames it could not take yet. The hub writes a subscriber's frames
//! straight into the kernel with one vectored write; only a socket whose buffer is full keeps a
//! queue, which its session flushes when the socket turns writable, with new frames appended behind
//! so order holds. A queue past its bound ends the client as too slow. It does not decide who gets
//! which frame (`hub`) or read from the client (`session`).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::{Mutex, MutexGuard, OnceLock};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Most frames handed to one `writev` (the kernel takes at most 1024).
const MAX_SLICES: usize = 64;

/// What became of frames given to [`Outbox::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// In the kernel's buffer already.
    Written,
    /// Queued behind a full socket; the session flushes them.
    Queued,
    /// The queue passed its bound: the client is too slow and is being closed.
    Overflow,
    /// The client is closing or gone; the frames were dropped.
    Closed,
}

/// What a flush achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Nothing is left queued.
    Empty,
    /// Some bytes went out; the socket is full again.
    Progress,
    /// The socket took nothing (or is not attached yet).
    Blocked,
}

/// How a session's outbox ended, when something other than the session ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Its queue overflowed; a close frame (1013) follows what was already on the wire.
    TooSlow,
    /// A write failed: the connection is gone.
    Broken,
}

#[derive(Default)]
struct State {
    /// Frames not yet written, oldest first.
    pending: VecDeque<Bytes>,
    /// Bytes of the first pending frame already written.
    offset: usize,
    /// Set once no more frames are taken.
    ended: Option<Ended>,
    /// The session closed the outbox itself (its close frame is the last one queued).
    closing: bool,
    /// Replayed frames still queued: a recovery (bounded by `--stream-recover-max`) may exceed the
    /// queue's bound without the client counting as slow; the room shrinks as they are written.
    replay_room: usize,
}

/// One client's socket and send queue, shared by the hub (writing deliveries) and the session
/// (reading, writing its own replies and control frames, flushing the queue).
pub struct Outbox {
    /// Set once the upgrade hands the connection over; frames sent before then wait in the queue.
    socket: OnceLock<TcpStream>,
    state: Mutex<State>,
    /// Wakes the session: frames are queued, or the outbox ended.
    wake: Notify,
    /// Frames the queue may hold before the client counts as too slow.
    limit: usize,
}

impl Outbox {
    /// An outbox whose first frame, if any, is `first` (a protocol's greeting goes out before
    /// anything the hub sends).
    pub fn new(limit: usize, first: Option<Bytes>) -> Self {
        Outbox {
            socket: OnceLock::new(),
            state: Mutex::new(State {
                pending: first.into_iter().collect(),
                ..State::default()
            }),
            wake: Notify::new(),
            limit: limit.max(1),
        }
    }

    /// Hands the connection to the outbox; frames queued meanwhile go out on the next flush.
    pub fn attach(&self, socket: TcpStream) {
        let _ = self.socket.set(socket);
        self.wake.notify_one();
    }

    pub fn socket(&self) -> Option<&TcpStream> {
        self.socket.get()
    }

    /// Resolves when the session has something to do: frames to flush, or the outbox ended.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }

    /// Writes `frames` now if nothing is queued and the socket takes them, queues the rest.
    pub fn send(&self, frames: &[Bytes]) -> Sent {
        self.send_with_room(frames, false)
    }

    /// [`send`](Self::send) for a replay of missed messages: what of them is queued does not count
    /// against the bound.
    pub fn send_replay(&self, frames: &[Bytes]) -> Sent {
        self.send_with_room(frames, true)
    }

    fn send_with_room(&self, frames: &[Bytes], replay: bool) -> Sent {
        let mut state = self.lock();
        if state.ended.is_some() || state.closing {
            return Sent::Closed;
        }
        let mut first = 0;
        let mut offset = 0;
        if state.pending.is_empty() {
            if let Some(socket) = self.socket.get() {
                match write(socket, frames, 0) {
                    Ok((f, o)) => (first, offset) = (f, o),
                    Err(_) => {
                        state.ended = Some(Ended::Broken);
                        drop(state);
                        self.wake.notify_one();
                        return Sent::Closed;
                    }
                }
                if first == frames.len() {
                    return Sent::Written;
                }
            }
        }
        if state.pending.is_empty() {
            state.offset = offset;
        }
        state.pending.extend(frames[first..].iter().cloned());
        if replay {
            state.replay_room += frames.len() - first;
        }
        let sent = if state.pending.len() > self.limit + state.replay_room {
            // Keep a frame already partly on the wire, or the close frame would land inside it.
            let keep = usize::from(state.offset > 0);
            state.pending.truncate(keep);
            state.pending.push_back(crate::wire::close(
                crate::wire::CLOSE_TOO_SLOW,
                "client too slow: message queue full",
            ));
            state.ended = Some(Ended::TooSlow);
            metrics::counter!(crate::metrics::QUEUE_OVERFLOWS).increment(1);
            Sent::Overflow
        } else {
            Sent::Queued
        };
        drop(state);
        self.wake.notify_one();
        sent
    }

    /// Queues a close frame behind everything pending; the outbox takes nothing more after it.
    pub fn close(&self, frame: Bytes) {
        let mut state = self.lock();
        if state.closing || state.ended.is_some() {
            return;
        }
        state.closing = true;
        state.pending.push_back(frame);
        drop(state);
        self.wake.notify_one();
    }

    /// How the outbox ended, if the hub or a failed write ended it.
    pub fn ended(&self) -> Option<Ended> {
        self.lock().ended
    }

    /// Whether frames wait for the socket.
    pub fn has_pending(&self) -> bool {
        !self.lock().pending.is_empty()
    }

    /// Writes what the socket takes of the queue; an error when the connection is gone.
    pub fn flush(&self) -> std::io::Result<Flush> {
        let Some(socket) = self.socket.get() else {
            return Ok(Flush::Blocked);
        };
        let mut state = self.lock();
        let mut progress = false;
        while !state.pending.is_empty() {
            let (frames, _) = state.pending.as_slices();
            let n = frames.len().min(MAX_SLICES);
            let before = state.offset;
            let (done, offset) = match write(socket, &frames[..n], before) {
                Ok(moved) => moved,
                Err(e) => {
                    state.ended = Some(Ended::Broken);
                    return Err(e);
                }
            };
            progress |= done > 0 || offset != before;
            state.pending.drain(..done);
            state.replay_room = state.replay_room.saturating_sub(done);
            state.offset = offset;
            if done < n {
                return Ok(if progress {
                    Flush::Progress
                } else {
                    Flush::Blocked
                });
            }
        }
        Ok(Flush::Empty)
    }

    /// The queued frames, taken out (tests look at what a session would have been sent).
    #[cfg(test)]
    pub fn take_pending(&self) -> Vec<Bytes> {
        let mut state = self.lock();
        state.offset = 0;
        state.pending.drain(..).collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Writes `frames` (the first from byte `offset`) until all are written or the socket is full.
/// Returns how many frames went out whole and how far into the next one the write got.
fn write(
    socket: &TcpStream,
    frames: &[Bytes],
    mut offset: usize,
) -> std::io::Result<(usize, usize)> {
    let mut first = 0;
    while first < frames.len() {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let n = (frames.len() - first).min(MAX_SLICES);
        for (slice, frame) in slices.iter_mut().zip(&frames[first..first + n]) {
            *slice = IoSlice::new(frame);
        }
        slices[0] = IoSlice::new(&frames[first][offset..]);
        let mut written = match socket.try_write_vectored(&slices[..n]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(w) => w,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        };
        // Walk the written bytes over the frames.
        while written > 0 {
            let left = frames[first].len() - offset;
            if written >= left {
                written -= left;
                first += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
    }
    Ok((first, offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (server, client)
    }

    #[tokio::test]
    async fn frames_before_attach_wait_and_keep_their_order() {
        let (server, mut client) = pair().await;
        let outbox = Outbox::new(16, None);
        assert_eq!(outbox.send(&[Bytes::from_static(b"ab")]), Sent::Queued);
        outbox.attach(server);
        // The queue is not empty, so this one queues behind instead of overtaking.
        assert_eq!(outbox.send(&[Bytes::from_static(b"cd")]), Sent::Queued);
        assert_eq!(outbox.flush().expect("flush"), Flush::Empty);
        assert_eq!(
            outbox.send(&[Bytes::from_static(b"e"), Bytes::from_static(b"f")]),
            Sent::Written
        );
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"abcdef");
    }

    #[tokio::test]
    async fn a_full_socket_queues_then_overflows_with_a_whole_close_frame() {
        let (server, mut client) = pair().await;
        let outbox = Outbox::new(4, None);
        outbox.attach(server);
        let frame = crate::wire::frame(crate::wire::OP_BINARY, &[b'x'; 60_000]);
        let mut sent = Vec::new();
        for _ in 0..200 {
            let s = outbox.send(std::slice::from_ref(&frame));
            sent.push(s);
            if s == Sent::Overflow {
                break;
            }
        }
        assert!(sent.contains(&Sent::Queued));
        assert_eq!(sent.last(), Some(&Sent::Overflow));
        assert_eq!(outbox.ended(), Some(Ended::TooSlow));
        assert_eq!(outbox.send(std::slice::from_ref(&frame)), Sent::Closed);
        // The client reads everything: whole frames, then the close frame with 1013.
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.expect("read");
            all
        });
        loop {
            if outbox.flush().expect("flush") == Flush::Empty {
                break;
            }
            outbox
                .socket()
                .expect("socket")
                .writable()
                .await
                .expect("writable");
        }
        drop(outbox);
        let all = reader.await.expect("reader");
        let whole = (all.len() - 4 - 35) % frame.len();
        assert_eq!(whole, 0, "only whole data frames before the close frame");
        let close = &all[all.len() - 39..];
        assert_eq!(&close[..4], &[0x88, 37, 0x03, 0xF5]);
    }
}
