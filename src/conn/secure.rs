//! The connection's TLS layer, when it has one: what the socket carries is sealed on the way
//! out and opened on the way in, around the same plaintext paths a plain connection uses.
//! Without the `tls` feature every connection is plain and this is a pass-through.

use std::io;

use crate::conn::shared::Conn;
#[cfg(feature = "tls")]
use crate::proto::mask::append_copy;
use crate::uring::{recv_append, RecvMulti};
#[cfg(feature = "tls")]
use crate::uring::{recv_next, Chunk, TcpStream};

/// The TLS state of one socket: the session, ciphertext received and not yet opened (a
/// record cut by the read), and records the session must send that no write carried yet.
#[cfg(feature = "tls")]
pub(crate) struct Secure {
    session: crate::tls::Session,
    incoming: Vec<u8>,
    out: Vec<u8>,
}

#[cfg(not(feature = "tls"))]
pub(crate) enum Secure {}

#[cfg(feature = "tls")]
fn tls_failed(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

#[cfg(feature = "tls")]
impl Secure {
    pub(crate) fn new(session: crate::tls::Session) -> Secure {
        Secure {
            session,
            incoming: Vec::new(),
            out: Vec::new(),
        }
    }

    /// The records that carry `plain`, after any record the session had waiting.
    pub(crate) fn seal(&mut self, plain: &[u8]) -> io::Result<Vec<u8>> {
        let mut wire = self.take_out();
        self.seal_into(plain, &mut wire)?;
        Ok(wire)
    }

    /// Appends the records that carry `plain` to `wire`.
    pub(crate) fn seal_into(&mut self, plain: &[u8], wire: &mut Vec<u8>) -> io::Result<()> {
        self.session.seal(plain, wire).map_err(tls_failed)
    }

    /// Opens the ciphertext `data` received (behind what was left of the last read): the
    /// plaintext is appended to `plain`; the records the session must send in answer stay in
    /// `self.out`. Records that lie whole in `data` are decrypted where they lie (a ring
    /// buffer, usually); only the start of a record cut by the read is kept.
    pub(crate) fn open(
        &mut self,
        mut data: Chunk,
        plain: &mut Vec<u8>,
    ) -> std::result::Result<crate::tls::Opened, rustls::Error> {
        if self.incoming.is_empty() {
            let (consumed, opened) = self.session.open_slice(&mut data, plain, &mut self.out);
            if opened.is_ok() && consumed < data.len() {
                append_copy(&mut self.incoming, &data[consumed..]);
            }
            return opened;
        }
        append_copy(&mut self.incoming, &data);
        drop(data);
        let opened = self.session.open(&mut self.incoming, plain, &mut self.out);
        // An idle connection keeps no record-sized buffer.
        if self.incoming.is_empty() {
            self.incoming = Vec::new();
        }
        opened
    }

    /// Takes the records waiting to be sent.
    pub(crate) fn take_out(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Runs the TLS handshake over `stream` to its end (the client's side: its first flight
    /// goes out here). Errors: [`crate::Error::Tls`] naming the cause (an untrusted
    /// certificate, a failed negotiation), [`crate::Error::Io`] when the connection fails or
    /// ends.
    pub(crate) async fn handshake(
        &mut self,
        stream: &TcpStream,
        recv: &mut Option<RecvMulti>,
    ) -> crate::Result<()> {
        let mut plain = Vec::new();
        let mut fresh = Chunk::Heap(Vec::new());
        loop {
            let opened = self.open(fresh, &mut plain);
            let answer = self.take_out();
            if !answer.is_empty() {
                stream.write_all(answer).await.0?;
            }
            let opened = opened.map_err(|e| crate::Error::Tls(crate::tls::describe(&e)))?;
            if !opened.handshaking {
                return Ok(());
            }
            fresh = recv_next(recv, stream).await?.ok_or_else(|| {
                crate::Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                ))
            })?;
        }
    }
}

impl Conn {
    /// Runs this connection over TLS with `session` (before anything is read or written).
    #[cfg(feature = "tls")]
    pub(crate) fn start_tls(&self, session: crate::tls::Session) {
        *self.secure.borrow_mut() = Some(Box::new(Secure::new(session)));
    }

    /// Runs the TLS handshake to its end; see [`Secure::handshake`].
    #[cfg(feature = "tls")]
    pub(crate) async fn tls_handshake(&self, recv: &mut Option<RecvMulti>) -> crate::Result<()> {
        // Nothing else uses the TLS state during the handshake.
        let Some(mut secure) = self.secure.borrow_mut().take() else {
            return Ok(());
        };
        let done = secure.handshake(&self.stream, recv).await;
        *self.secure.borrow_mut() = Some(secure);
        done
    }

    /// Whether this connection runs over TLS.
    pub(crate) fn is_tls(&self) -> bool {
        self.secure.borrow().is_some()
    }

    /// The server name the TLS client asked for.
    pub(crate) fn sni(&self) -> Option<String> {
        #[cfg(feature = "tls")]
        if let Some(s) = self.secure.borrow().as_ref() {
            return s.session.sni();
        }
        None
    }

    /// What goes on the wire for `plain`: the records that seal it, or `plain` itself on a
    /// plain connection.
    pub(crate) fn seal(&self, plain: Vec<u8>) -> io::Result<Vec<u8>> {
        #[cfg(feature = "tls")]
        if self.is_tls() {
            let wire = self.seal_slice(&plain);
            super::writer::keep_spare(self, plain);
            return wire;
        }
        Ok(plain)
    }

    /// The records that carry `parts`, in order, on a TLS connection: each large part sealed
    /// where it lies, the small ones between them gathered into one record.
    #[cfg(feature = "tls")]
    pub(crate) fn seal_parts(&self, parts: &[bytes::Bytes]) -> io::Result<Vec<u8>> {
        /// A part at least this large is sealed on its own.
        const ALONE: usize = 4 << 10;
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut secure = self.secure.borrow_mut();
        let Some(s) = secure.as_mut() else {
            return Ok(parts.concat());
        };
        let mut wire = s.take_out();
        if wire.capacity() == 0 {
            // Room for the records' overhead too.
            wire = self.pool.take_large_or_new(total + total / 256 + 256);
        }
        let mut small = Vec::new();
        for part in parts {
            if part.len() < ALONE {
                small.extend_from_slice(part);
                continue;
            }
            if !small.is_empty() {
                s.seal_into(&small, &mut wire)?;
                small.clear();
            }
            s.seal_into(part, &mut wire)?;
        }
        if !small.is_empty() {
            s.seal_into(&small, &mut wire)?;
        }
        Ok(wire)
    }

    #[cfg(not(feature = "tls"))]
    pub(crate) fn seal_parts(&self, parts: &[bytes::Bytes]) -> io::Result<Vec<u8>> {
        Ok(parts.concat())
    }

    /// The records that carry `plain` on a TLS connection, in a buffer of the thread's pool
    /// when a large one is spare (give it back with `pool.put_large` once written).
    #[cfg(feature = "tls")]
    pub(crate) fn seal_slice(&self, plain: &[u8]) -> io::Result<Vec<u8>> {
        let mut secure = self.secure.borrow_mut();
        let Some(s) = secure.as_mut() else {
            return Ok(plain.to_vec());
        };
        if s.out.capacity() == 0 && plain.len() >= crate::conn::buffers::LARGE_MIN {
            s.out = self
                .pool
                .take_large_or_new(plain.len() + plain.len() / 256 + 64);
        }
        s.seal(plain)
    }

    /// Records the session has waiting (an answer to the peer's key update): the writer sends
    /// them even when nothing else is queued.
    pub(crate) fn tls_pending(&self) -> bool {
        #[cfg(feature = "tls")]
        if let Some(s) = self.secure.borrow().as_ref() {
            return !s.out.is_empty();
        }
        false
    }

    /// Writes all of `plain`, sealed on a TLS connection. For the handshake's answers and
    /// other writes made before the writer runs or after it ended.
    pub(crate) async fn send_all(&self, plain: Vec<u8>) -> io::Result<()> {
        let wire = self.seal(plain)?;
        self.stream.write_all(wire).await.0
    }

    /// Sends close_notify on a TLS connection (the end of the stream of records); nothing on a
    /// plain one.
    pub(crate) async fn close_notify(&self) {
        #[cfg(feature = "tls")]
        {
            let alert = match self.secure.borrow_mut().as_mut() {
                Some(s) => {
                    let mut wire = s.take_out();
                    match s.session.close_notify(&mut wire) {
                        Ok(()) => wire,
                        Err(_) => return,
                    }
                }
                None => return,
            };
            let _ = self.stream.write_all(alert).await;
        }
    }

    /// Appends the next plaintext bytes to `buf`; false at the end of the stream (EOF, or
    /// close_notify on TLS). On a TLS connection the records the session must send in answer
    /// (the handshake's) are written here, or, once `writer_runs`, left to the writer.
    /// Cancellation safe: bytes join the TLS state only once received.
    pub(crate) async fn recv_plain(
        &self,
        recv: &mut Option<RecvMulti>,
        buf: &mut Vec<u8>,
        writer_runs: bool,
    ) -> io::Result<bool> {
        self.recv_plain_into(recv, buf, writer_runs, None).await
    }

    /// [`Conn::recv_plain`], where an empty `buf` without room is replaced, once bytes have
    /// arrived, by a buffer of the thread's pool (so that a waiting connection holds none,
    /// and a message does not grow one from nothing).
    pub(crate) async fn recv_plain_into(
        &self,
        recv: &mut Option<RecvMulti>,
        buf: &mut Vec<u8>,
        writer_runs: bool,
        pool: Option<&crate::conn::buffers::BufferPool>,
    ) -> io::Result<bool> {
        if !self.is_tls() {
            return recv_append(recv, &self.stream, buf).await;
        }
        #[cfg(not(feature = "tls"))]
        let _ = (writer_runs, pool);
        #[cfg(feature = "tls")]
        loop {
            let (fresh, more) = match recv_next(recv, &self.stream).await? {
                Some(chunk) => (chunk, true),
                None => (Chunk::Heap(Vec::new()), false),
            };
            if let (Some(pool), 0) = (pool, buf.capacity()) {
                if let crate::conn::buffers::ReadBuf::Heap(mut v) = pool.checkout() {
                    v.clear();
                    *buf = v;
                }
            }
            let before = buf.len();
            let (opened, answer) = {
                let mut secure = self.secure.borrow_mut();
                let Some(s) = secure.as_mut() else {
                    return Ok(false);
                };
                let opened = s.open(fresh, buf);
                let answer = if writer_runs {
                    Vec::new()
                } else {
                    s.take_out()
                };
                (opened, answer)
            };
            if !answer.is_empty() {
                self.stream.write_all(answer).await.0?;
            } else if writer_runs && self.tls_pending() {
                self.wake_writer.notify();
            }
            let opened = opened.map_err(tls_failed)?;
            if buf.len() > before {
                return Ok(true);
            }
            if opened.peer_closed || !more {
                return Ok(false);
            }
        }
        #[cfg(not(feature = "tls"))]
        unreachable!("no TLS session without the tls feature")
    }
}
