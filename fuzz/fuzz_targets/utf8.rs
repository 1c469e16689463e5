//! The incremental UTF-8 validator must agree with `std::str::from_utf8` on the whole input,
//! however it is cut into pieces.
//!
//! Input: two bytes that pick two cut points, then the text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use uringws::proto::utf8::Utf8Validator;

fuzz_target!(|input: &[u8]| {
    let [a, b, ref data @ ..] = *input else {
        return;
    };
    let want = std::str::from_utf8(data).is_ok();
    let cut = |c: u8| (c as usize * data.len() / 255).min(data.len());
    let (a, b) = (cut(a), cut(b));

    // In one piece.
    assert_eq!(Utf8Validator::new().feed(data, true).is_ok(), want);

    // In two pieces, cut at `a`.
    let mut v = Utf8Validator::new();
    let got = v
        .feed(&data[..a], false)
        .and_then(|()| v.feed(&data[a..], true));
    assert_eq!(got.is_ok(), want, "cut at {a}");

    // In three pieces, the middle one possibly empty, then an empty last piece.
    let (lo, hi) = (a.min(b), a.max(b));
    let mut v = Utf8Validator::new();
    let got = v
        .feed(&data[..lo], false)
        .and_then(|()| v.feed(&data[lo..hi], false))
        .and_then(|()| v.feed(&data[hi..], false))
        .and_then(|()| v.feed(&[], true));
    assert_eq!(got.is_ok(), want, "cuts at {lo} and {hi}");

    // Fail-fast: a prefix that std rejects as invalid (not merely truncated) is rejected
    // before the stream ends.
    if let Err(e) = std::str::from_utf8(&data[..hi]) {
        if e.error_len().is_some() {
            let mut v = Utf8Validator::new();
            let early = v
                .feed(&data[..lo], false)
                .and_then(|()| v.feed(&data[lo..hi], false));
            assert!(early.is_err(), "invalid prefix of {hi} bytes accepted");
        }
    }
});
