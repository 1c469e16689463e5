//! The TLS 1.3 record layer (RFC 8446 §5) after the handshake, run here rather than in rustls:
//! records are opened and sealed in place with ring's AEAD, with no allocation and no copy
//! beyond the one into the caller's buffer. rustls keeps the handshake, and afterwards
//! (through its `KernelConnection`) the key schedule: key updates and session tickets. This
//! is the shape kernel TLS takes, where the kernel would run this layer instead.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{AlertDescription, ConnectionTrafficSecrets, Error};

use super::Opened;
use crate::proto::mask::append_copy;

/// Record content types (RFC 8446 §5.1).
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
/// Handshake message types that may follow the handshake (RFC 8446 §4.6).
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;
/// The largest plaintext a record carries, and the largest ciphertext (RFC 8446 §5.2).
const MAX_PLAIN: usize = 1 << 14;
const MAX_CIPHER: usize = MAX_PLAIN + 256;
const HEADER: usize = 5;
const TAG: usize = 16;
/// Post-handshake messages are small (a ticket is a few hundred bytes); a peer that sends
/// more than this in pieces is not kept in memory.
const MAX_HANDSHAKE: usize = 64 << 10;

/// rustls' side of a converted connection: what computes the next keys.
pub(crate) enum Kernel {
    Server(KernelConnection<ServerConnectionData>),
    Client(KernelConnection<ClientConnectionData>),
}

impl Kernel {
    fn update(&mut self, tx: bool) -> Result<ConnectionTrafficSecrets, Error> {
        let next = match (self, tx) {
            (Kernel::Server(k), true) => k.update_tx_secret(),
            (Kernel::Server(k), false) => k.update_rx_secret(),
            (Kernel::Client(k), true) => k.update_tx_secret(),
            (Kernel::Client(k), false) => k.update_rx_secret(),
        };
        next.map(|(_, secrets)| secrets)
    }
}

/// One direction's key, static IV and record sequence number.
struct Direction {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
}

impl Direction {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Result<Direction, Error> {
        let (alg, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => return Err(Error::General("unsupported TLS 1.3 cipher".into())),
        };
        let key = UnboundKey::new(alg, key.as_ref())
            .map_err(|_| Error::General("bad TLS traffic key".into()))?;
        let iv = iv
            .as_ref()
            .try_into()
            .map_err(|_| Error::General("bad TLS traffic IV".into()))?;
        Ok(Direction {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// The per-record nonce: the IV XOR the sequence number (RFC 8446 §5.3); advances it.
    fn next_nonce(&mut self) -> Result<Nonce, Error> {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or_else(|| Error::General("TLS record sequence exhausted".into()))?;
        Ok(Nonce::assume_unique_for_key(nonce))
    }
}

/// A TLS 1.3 connection past its handshake.
pub(crate) struct RecordLayer {
    kernel: Kernel,
    tx: Direction,
    rx: Direction,
    /// Records sealed under one key before the next is taken (the suite's confidentiality
    /// limit, as rustls keeps it).
    tx_limit: u64,
    /// A post-handshake message cut across records.
    handshake: Vec<u8>,
    /// close_notify received: what follows it is ignored.
    peer_closed: bool,
}

impl RecordLayer {
    /// Takes over from rustls with the secrets it handed out.
    pub(crate) fn new(
        kernel: Kernel,
        secrets: rustls::ExtractedSecrets,
    ) -> Result<RecordLayer, Error> {
        let suite = match &kernel {
            Kernel::Server(k) => k.negotiated_cipher_suite(),
            Kernel::Client(k) => k.negotiated_cipher_suite(),
        };
        let tx_limit = suite
            .tls13()
            .map_or(1 << 24, |s| s.common.confidentiality_limit);
        let (tx_seq, tx) = secrets.tx;
        let (rx_seq, rx) = secrets.rx;
        Ok(RecordLayer {
            kernel,
            tx: Direction::new(tx_seq, tx)?,
            rx: Direction::new(rx_seq, rx)?,
            tx_limit,
            handshake: Vec::new(),
            peer_closed: false,
        })
    }

    /// Opens the whole records at the start of `data`, in place: application data is appended
    /// to `plain`, records to send in answer (a key update) to `out`. Returns the bytes
    /// consumed (the rest is the start of a record cut by the read). On an error a fatal
    /// alert is in `out` and the connection is done.
    pub(crate) fn open(
        &mut self,
        data: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> (usize, Result<Opened, Error>) {
        let mut consumed = 0;
        while !self.peer_closed {
            let rest = &mut data[consumed..];
            let Some(header) = rest.get(..HEADER) else {
                break;
            };
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            let result = if header[0] != APPLICATION_DATA {
                Err((
                    AlertDescription::UnexpectedMessage,
                    Error::General(format!("unencrypted TLS record of type {}", header[0])),
                ))
            } else if len > MAX_CIPHER {
                Err((
                    AlertDescription::RecordOverflow,
                    Error::PeerSentOversizedRecord,
                ))
            } else if rest.len() < HEADER + len {
                break;
            } else {
                let (header, body) = rest[..HEADER + len].split_at_mut(HEADER);
                self.open_record(header, body, plain, out)
            };
            if let Err((alert, e)) = result {
                // No alert answers the peer's own.
                if !matches!(e, Error::AlertReceived(_)) {
                    let _ = self.seal_record(ALERT, &[2, u8::from(alert)], out);
                }
                return (consumed, Err(e));
            }
            consumed += HEADER + len;
        }
        let opened = Opened {
            handshaking: false,
            peer_closed: self.peer_closed,
        };
        (consumed, Ok(opened))
    }

    fn open_record(
        &mut self,
        header: &[u8],
        body: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(), (AlertDescription, Error)> {
        let bad_mac = || (AlertDescription::BadRecordMac, Error::DecryptError);
        let nonce = self
            .rx
            .next_nonce()
            .map_err(|e| (AlertDescription::InternalError, e))?;
        let inner = self
            .rx
            .key
            .open_in_place(nonce, Aad::from(header), body)
            .map_err(|_| bad_mac())?;
        // The content type is the last byte that is not padding.
        let Some(end) = inner.iter().rposition(|&b| b != 0) else {
            return Err(unexpected("a TLS record with no content type"));
        };
        let (content, kind) = (&inner[..end], inner[end]);
        if content.len() > MAX_PLAIN {
            return Err((
                AlertDescription::RecordOverflow,
                Error::PeerSentOversizedRecord,
            ));
        }
        if kind != HANDSHAKE && !self.handshake.is_empty() {
            return Err(unexpected("a TLS handshake message cut by another record"));
        }
        match kind {
            APPLICATION_DATA => append_copy(plain, content),
            ALERT => match content {
                [_, 0] => self.peer_closed = true,
                // user_canceled is the one warning TLS 1.3 keeps; close_notify follows it.
                [_, 90] => {}
                [_, d] => {
                    let d = AlertDescription::from(*d);
                    return Err((d, Error::AlertReceived(d)));
                }
                _ => return Err(decode_error("a TLS alert of the wrong length")),
            },
            HANDSHAKE if !content.is_empty() => {
                self.handshake.extend_from_slice(content);
                self.handshake_messages(out)?;
            }
            _ => return Err(unexpected("a TLS record of an unexpected type")),
        }
        Ok(())
    }

    /// Handles the whole post-handshake messages gathered so far.
    fn handshake_messages(&mut self, out: &mut Vec<u8>) -> Result<(), (AlertDescription, Error)> {
        let mut at = 0;
        while let Some(&[kind, a, b, c]) = self.handshake.get(at..at + 4) {
            let len = u32::from_be_bytes([0, a, b, c]) as usize;
            let Some(body) = self.handshake.get(at + 4..at + 4 + len) else {
                break;
            };
            let body = body.to_vec();
            at += 4 + len;
            match (kind, body.as_slice(), &mut self.kernel) {
                (KEY_UPDATE, &[request], _) if request <= 1 => {
                    // A key change must end its record (RFC 8446 §5.1).
                    if at != self.handshake.len() {
                        return Err(unexpected("data after a TLS KeyUpdate in its record"));
                    }
                    let next = self.kernel.update(false).map_err(internal)?;
                    self.rx = Direction::new(0, next).map_err(internal)?;
                    if request == 1 {
                        self.update_tx(out).map_err(internal)?;
                    }
                }
                (KEY_UPDATE, ..) => return Err(decode_error("a malformed TLS KeyUpdate")),
                (NEW_SESSION_TICKET, body, Kernel::Client(k)) => k
                    .handle_new_session_ticket(body)
                    .map_err(|e| (AlertDescription::DecodeError, e))?,
                _ => return Err(unexpected("a TLS handshake message after the handshake")),
            }
        }
        self.handshake.drain(..at);
        if self.handshake.len() > MAX_HANDSHAKE {
            return Err(unexpected("an oversized TLS handshake message"));
        }
        if self.handshake.is_empty() {
            self.handshake = Vec::new();
        }
        Ok(())
    }

    /// Sends a KeyUpdate (not asking for one back) under the current key, then takes the next.
    fn update_tx(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        self.seal_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out)?;
        let next = self.kernel.update(true)?;
        self.tx = Direction::new(0, next)?;
        Ok(())
    }

    /// Appends the application-data records that carry `plain` to `out`.
    pub(crate) fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        out.reserve(plain.len() + plain.len().div_ceil(MAX_PLAIN) * (HEADER + 1 + TAG));
        for chunk in plain.chunks(MAX_PLAIN) {
            self.seal_record(APPLICATION_DATA, chunk, out)?;
        }
        Ok(())
    }

    /// Appends a close_notify alert to `out`.
    pub(crate) fn close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        self.seal_record(ALERT, &[1, 0], out)
    }

    /// Appends one record of `kind` carrying `content` (at most `MAX_PLAIN` bytes).
    pub(super) fn seal_record(
        &mut self,
        kind: u8,
        content: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        if self.tx.seq >= self.tx_limit && kind == APPLICATION_DATA {
            self.update_tx(out)?;
        }
        let len = content.len() + 1 + TAG;
        let [hi, lo] = (len as u16).to_be_bytes();
        let header = [APPLICATION_DATA, 3, 3, hi, lo];
        let start = out.len();
        out.extend_from_slice(&header);
        append_copy(out, content);
        out.push(kind);
        let nonce = self.tx.next_nonce()?;
        let tag = self
            .tx
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[start + HEADER..])
            .map_err(|_| Error::EncryptError)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Makes the next application-data record take a fresh key (tests: key updates without
    /// sealing millions of records).
    #[cfg(test)]
    pub(crate) fn expire_tx_key(&mut self) {
        self.tx_limit = self.tx.seq;
    }

    /// Sends a KeyUpdate that asks the peer for one back, and takes the next key (tests: the
    /// peer's key update, which rustls' unbuffered API cannot start).
    #[cfg(test)]
    pub(crate) fn request_key_update(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        self.seal_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 1], out)?;
        let next = self.kernel.update(true)?;
        self.tx = Direction::new(0, next)?;
        Ok(())
    }
}

fn unexpected(why: &str) -> (AlertDescription, Error) {
    (
        AlertDescription::UnexpectedMessage,
        Error::General(why.into()),
    )
}

fn decode_error(why: &str) -> (AlertDescription, Error) {
    (AlertDescription::DecodeError, Error::General(why.into()))
}

fn internal(e: Error) -> (AlertDescription, Error) {
    (AlertDescription::InternalError, e)
}
