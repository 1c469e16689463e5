//! The TLS 1.3 record layer that takes over from rustls after the handshake
//! (`src/tls/record.rs`), on arbitrary input, through `uringws::tls::fuzzing::records`: raw
//! ciphertext in pieces, or records of any content type and padding sealed with the right keys,
//! so that what follows the decryption is reached too.
//!
//! Checked: nothing panics; the plaintext handed over is exactly the application data sealed,
//! up to the first record of another type.
#![no_main]

use libfuzzer_sys::fuzz_target;

const CERT: &[u8] = include_bytes!("common/tls-cert.pem");
const KEY: &[u8] = include_bytes!("common/tls-key.pem");

fuzz_target!(|data: &[u8]| {
    uringws::tls::fuzzing::records(CERT, KEY, data);
});
