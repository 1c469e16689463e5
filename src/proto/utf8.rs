//! Incremental UTF-8 validation across fragments and reads, failing at the first invalid byte.
//!
//! Text arrives in pieces: frames of a fragmented message, and parts of one frame in separate
//! reads. [`Utf8Validator`] checks each piece with simdutf8 as it arrives, carrying the
//! incomplete tail of a code point (at most 3 bytes) to the next piece, so that an invalid byte
//! is reported as soon as it is seen rather than at the end of the message.

use simdutf8::compat::from_utf8;

/// Validates a stream of bytes as UTF-8, piece by piece.
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    tail: [u8; 4],
    tail_len: usize,
}

/// The stream is not valid UTF-8 (or ended inside a code point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utf8Error;

/// The length of a code point from its first byte, or 0 when it cannot start one.
fn sequence_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 0,
    }
}

impl Utf8Validator {
    /// A validator at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets any carried tail, ready for the next message.
    pub fn reset(&mut self) {
        self.tail_len = 0;
    }

    /// Whether the stream so far ends on a code point boundary.
    pub fn is_complete(&self) -> bool {
        self.tail_len == 0
    }

    /// Validates the next piece. With `last`, the stream must also end on a code point boundary.
    pub fn feed(&mut self, mut data: &[u8], last: bool) -> Result<(), Utf8Error> {
        if self.tail_len > 0 {
            let need = sequence_len(self.tail[0]);
            let take = (need - self.tail_len).min(data.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&data[..take]);
            self.tail_len += take;
            data = &data[take..];
            match from_utf8(&self.tail[..self.tail_len]) {
                Ok(_) => self.tail_len = 0,
                Err(e) if e.error_len().is_none() => {
                    // Still a valid prefix of a code point; only possible when data ran out.
                    return if last { Err(Utf8Error) } else { Ok(()) };
                }
                Err(_) => return Err(Utf8Error),
            }
        }
        match from_utf8(data) {
            Ok(_) => {}
            Err(e) if e.error_len().is_none() => {
                let rest = &data[e.valid_up_to()..];
                self.tail[..rest.len()].copy_from_slice(rest);
                self.tail_len = rest.len();
            }
            Err(_) => return Err(Utf8Error),
        }
        if last && self.tail_len > 0 {
            return Err(Utf8Error);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed_split(data: &[u8], cuts: &[usize]) -> Result<(), Utf8Error> {
        let mut v = Utf8Validator::new();
        let mut at = 0;
        for &c in cuts {
            let c = c.clamp(at, data.len());
            v.feed(&data[at..c], false)?;
            at = c;
        }
        v.feed(&data[at..], true)
    }

    #[test]
    fn code_point_split_everywhere() {
        let s = "aκόσμε€𝄞z".as_bytes();
        for i in 0..=s.len() {
            for j in i..=s.len() {
                assert_eq!(feed_split(s, &[i, j]), Ok(()), "{i} {j}");
            }
        }
    }

    #[test]
    fn fails_at_first_invalid_byte_not_at_end() {
        // Autobahn 6.4.1: the invalid byte arrives in the middle piece.
        let mut v = Utf8Validator::new();
        v.feed("κόσμε".as_bytes(), false).unwrap();
        assert_eq!(v.feed(&[0xf4, 0x90, 0x80, 0x80], false), Err(Utf8Error));
        // An invalid continuation after a carried lead byte fails immediately.
        let mut v = Utf8Validator::new();
        v.feed(&[0xce], false).unwrap();
        assert_eq!(v.feed(&[0x41], false), Err(Utf8Error));
        // Surrogates and overlongs are refused on their first impossible byte.
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xed, 0xa0], false), Err(Utf8Error));
        let mut v = Utf8Validator::new();
        assert_eq!(v.feed(&[0xc0], false), Err(Utf8Error));
    }

    #[test]
    fn truncated_at_end_is_invalid() {
        let mut v = Utf8Validator::new();
        v.feed(&[0xe2, 0x82], false).unwrap();
        assert_eq!(v.feed(&[], true), Err(Utf8Error));
        assert_eq!(feed_split(&[0xf0, 0x9d, 0x84], &[1]), Err(Utf8Error));
    }

    proptest! {
        #[test]
        fn matches_std(data in proptest::collection::vec(any::<u8>(), 0..64),
                       a in 0usize..64, b in 0usize..64) {
            let (a, b) = (a.min(b), a.max(b));
            let want = std::str::from_utf8(&data).is_ok();
            prop_assert_eq!(feed_split(&data, &[a, b]).is_ok(), want);
        }

        #[test]
        fn valid_strings_pass_any_split(s in "\\PC{0,40}", a in 0usize..200, b in 0usize..200) {
            let (a, b) = (a.min(b), a.max(b));
            prop_assert_eq!(feed_split(s.as_bytes(), &[a, b]), Ok(()));
        }
    }
}
