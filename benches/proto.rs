//! Benchmarks of the sans-I/O protocol core: masking, header decoding, the handshake, UTF-8
//! validation, the message reader and permessage-deflate.
//!
//! Run with `cargo bench --bench proto` (about a minute and a half), one group with
//! `cargo bench --bench proto -- mask`, or everything once as a smoke test with
//! `cargo bench --bench proto -- --quick`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

use uringws::proto::deflate::{Compression, Compressor, Inflater, Stream};
use uringws::proto::frame::{decode_header, write_frame, DecodeLimits, OpCode, Role};
use uringws::proto::handshake::{accept_key, parse, Handshake, HeadScanner, DEFAULT_MAX_REQUEST};
use uringws::proto::mask::{append_copy, append_masked, apply_mask, apply_mask_bytewise};
use uringws::proto::message::{Reader, ReaderConfig};
use uringws::proto::utf8::Utf8Validator;

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Short runs: the whole file stays under two minutes on a small machine.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

fn mask(c: &mut Criterion) {
    let mut group = c.benchmark_group("mask");
    for size in [16usize, 1000, 1 << 10, 64 << 10, 1 << 20] {
        group.throughput(Throughput::Bytes(size as u64));
        let src: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
        let mut buf = src.clone();
        // Phase 1: the key is used rotated, as for a payload continuing from an earlier read.
        group.bench_with_input(BenchmarkId::new("apply_mask", size), &size, |b, _| {
            b.iter(|| apply_mask(black_box(&mut buf[..]), black_box(KEY), black_box(1)))
        });
        // Where a payload lies in a read buffer: after a 14-byte header (64-bit length, mask),
        // so not aligned.
        let mut framed = vec![0u8; size + 14];
        group.bench_with_input(BenchmarkId::new("apply_mask_at_14", size), &size, |b, _| {
            b.iter(|| apply_mask(black_box(&mut framed[14..]), black_box(KEY), black_box(1)))
        });
        group.bench_with_input(BenchmarkId::new("bytewise", size), &size, |b, _| {
            b.iter(|| apply_mask_bytewise(black_box(&mut buf[..]), black_box(KEY), black_box(1)))
        });
        // A payload moved into a reassembly buffer: unmasked in place, then copied (two
        // passes), against `append_masked` (one), both from a 14-byte header's offset.
        let mut assembled = Vec::with_capacity(size);
        group.bench_with_input(BenchmarkId::new("unmask_then_copy", size), &size, |b, _| {
            b.iter(|| {
                assembled.clear();
                apply_mask(black_box(&mut framed[14..]), black_box(KEY), black_box(1));
                assembled.extend_from_slice(&framed[14..]);
                black_box(&assembled);
            })
        });
        group.bench_with_input(BenchmarkId::new("append_masked", size), &size, |b, _| {
            b.iter(|| {
                assembled.clear();
                append_masked(&mut assembled, black_box(&framed[14..]), black_box(KEY), 1);
                black_box(&assembled);
            })
        });
        // The floor: a plain copy of the same number of bytes into a preallocated buffer.
        let mut dst = vec![0u8; size];
        group.bench_with_input(BenchmarkId::new("copy", size), &size, |b, _| {
            b.iter(|| {
                black_box(&mut dst[..]).copy_from_slice(black_box(&src[..]));
            })
        });
        // Appending to a buffer whose end lies 16 bytes after the source modulo 4096 (where
        // glibc's `rep movsb` is slow on AMD Zen): `extend_from_slice` against `append_copy`.
        let mut aliased = Vec::with_capacity(size + 8192);
        let lead = (src.as_ptr() as usize + 16).wrapping_sub(aliased.as_ptr() as usize) & 4095;
        for (name, ours) in [
            ("copy_aliased_memcpy", false),
            ("copy_aliased_append_copy", true),
        ] {
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                b.iter(|| {
                    aliased.clear();
                    aliased.resize(lead, 0);
                    if ours {
                        append_copy(&mut aliased, black_box(&src[..]));
                    } else {
                        aliased.extend_from_slice(black_box(&src[..]));
                    }
                    black_box(&aliased);
                })
            });
        }
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let limits = DecodeLimits {
        role: Role::Server,
        allowed_rsv: 0,
        max_frame: 1 << 24,
    };
    let small: &[u8] = &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d];
    let len16: &[u8] = &[0x82, 0xfe, 0x01, 0x00, 0x37, 0xfa, 0x21, 0x3d];
    let len64: &[u8] = &[
        0x82, 0xff, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00, 0x37, 0xfa, 0x21, 0x3d,
    ];
    let mut group = c.benchmark_group("decode_header");
    for (name, header) in [("small_masked", small), ("len16", len16), ("len64", len64)] {
        group.bench_function(name, |b| {
            b.iter(|| decode_header(black_box(header), black_box(&limits)))
        });
    }
    group.finish();
}

/// What Chromium sends to open a WebSocket.
const CHROMIUM_REQUEST: &[u8] = b"GET /chat?room=42 HTTP/1.1\r\n\
Host: example.com:8080\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

fn handshake(c: &mut Criterion) {
    // Sanity: the request is a valid upgrade (a bench of the error path would be misleading).
    assert!(matches!(
        parse(CHROMIUM_REQUEST),
        Ok(Handshake::WebSocket(_))
    ));
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Bytes(CHROMIUM_REQUEST.len() as u64));
    group.bench_function("scan_and_parse", |b| {
        b.iter(|| {
            let buf = black_box(CHROMIUM_REQUEST);
            let n = HeadScanner::new(DEFAULT_MAX_REQUEST)
                .scan(buf)
                .unwrap()
                .unwrap();
            match parse(&buf[..n]) {
                Ok(Handshake::WebSocket(u)) => u.key.len(),
                _ => unreachable!(),
            }
        })
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("accept_key", |b| {
        b.iter(|| accept_key(black_box(b"dGhlIHNhbXBsZSBub25jZQ==")))
    });
    group.finish();
}

fn utf8(c: &mut Criterion) {
    const SIZE: usize = 64 << 10;
    let ascii: Vec<u8> = (0..SIZE).map(|i| b' ' + (i % 95) as u8).collect();
    let mut mixed = String::with_capacity(SIZE);
    let sample = "Hello, κόσμε! Привет, мир. こんにちは世界 𝄞♫ café naïve ";
    'fill: loop {
        for ch in sample.chars() {
            if mixed.len() + ch.len_utf8() > SIZE {
                break 'fill;
            }
            mixed.push(ch);
        }
    }
    let mixed = mixed.into_bytes();
    let mut group = c.benchmark_group("utf8");
    for (name, data) in [("ascii", &ascii), ("mixed", &mixed)] {
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_with_input(BenchmarkId::new("validator_whole", name), data, |b, d| {
            b.iter(|| Utf8Validator::new().feed(black_box(d), true).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("validator_1500", name), data, |b, d| {
            b.iter(|| {
                let mut v = Utf8Validator::new();
                let mut pieces = black_box(d).chunks(1500).peekable();
                while let Some(p) = pieces.next() {
                    v.feed(p, pieces.peek().is_none()).unwrap();
                }
            })
        });
        group.bench_with_input(BenchmarkId::new("std_from_utf8", name), data, |b, d| {
            b.iter(|| std::str::from_utf8(black_box(d)).unwrap().len())
        });
    }
    group.finish();
}

/// Feeds all of `buf` to `reader` the way a read loop does, returning the number of messages.
fn read_all(reader: &mut Reader, buf: &mut [u8]) -> usize {
    let mut start = 0;
    let mut messages = 0;
    loop {
        let p = reader.read(&mut buf[start..]).unwrap();
        start += p.consumed;
        match p.message {
            Some(m) => {
                black_box(m);
                messages += 1;
            }
            None => break,
        }
    }
    assert_eq!(start, buf.len());
    messages
}

fn reader(c: &mut Criterion) {
    let mut small = Vec::new();
    for i in 0..100 {
        let text = format!("message number {i:05}");
        assert_eq!(text.len(), 20);
        write_frame(&mut small, true, OpCode::Text, Some(KEY), text.as_bytes());
    }
    let payload: Vec<u8> = (0..64u32 << 10).map(|i| (i * 13) as u8).collect();
    let mut large = Vec::new();
    write_frame(&mut large, true, OpCode::Binary, Some(KEY), &payload);

    let mut group = c.benchmark_group("reader");
    // The buffer is unmasked in place: every iteration starts from a fresh copy of the template
    // (the copy is setup, not measured).
    let cases = [
        ("100x20B_text", &small, 64usize << 10, 100),
        // 64 KiB + header exceeds the default 64 KiB inline limit: streamed into the reader's
        // reassembly buffer (one copy).
        ("64KiB_binary_streamed", &large, 64 << 10, 1),
        // With a buffer large enough for the whole frame it is handed out in place.
        ("64KiB_binary_inline", &large, 128 << 10, 1),
    ];
    for (name, template, inline_limit, count) in cases {
        group.throughput(Throughput::Bytes(template.len() as u64));
        let mut r = Reader::new(ReaderConfig {
            inline_limit,
            ..ReaderConfig::new(Role::Server)
        });
        assert_eq!(read_all(&mut r, &mut template.clone()), count);
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                || template.clone(),
                |buf| read_all(&mut r, buf),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// permessage-deflate on JSON-like text, without context takeover (each message on its own,
/// as in shared mode): 1 KiB at zlib levels 1, 2 and 6, 16 to 256 bytes at level 1 (the send
/// threshold), and inflating 1 KiB. Each compressed size is printed once.
fn deflate(c: &mut Criterion) {
    let text = uringws::cli::load::json_like(1024);
    let stream = Stream {
        no_context_takeover: true,
        window_bits: 15,
    };
    let mut group = c.benchmark_group("deflate");
    group.throughput(Throughput::Bytes(text.len() as u64));
    let mut wire = Vec::new();
    for level in [1, 2, 6] {
        let mut comp = Compressor::new(stream, &Compression::shared().level(level));
        let mut out = Vec::with_capacity(2048);
        assert!(comp.compress(&text, &mut out));
        eprintln!("deflate level {level}: 1024 -> {} bytes", out.len());
        if level == 1 {
            wire = out.clone();
        }
        group.bench_function(BenchmarkId::new("compress_1KiB_json", level), |b| {
            b.iter(|| {
                out.clear();
                comp.compress(black_box(&text), &mut out)
            })
        });
    }
    // The send threshold: what a message of each size shrinks to, and what it costs.
    for size in [16, 64, 128, 256] {
        let text = uringws::cli::load::json_like(size);
        let mut comp = Compressor::new(stream, &Compression::shared().min_size(0));
        let mut out = Vec::with_capacity(2048);
        let shrank = comp.compress(&text, &mut out);
        eprintln!(
            "deflate level 1: {size} -> {}",
            if shrank {
                format!("{} bytes", out.len())
            } else {
                "not smaller: sent plain".into()
            }
        );
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::new("compress_json_level_1", size), |b| {
            b.iter(|| {
                out.clear();
                comp.compress(black_box(&text), &mut out)
            })
        });
    }
    group.throughput(Throughput::Bytes(text.len() as u64));
    let mut inflater = Inflater::new(stream);
    let mut out = Vec::with_capacity(2048);
    group.bench_function("inflate_1KiB_json", |b| {
        b.iter(|| {
            out.clear();
            let r = inflater.inflate(black_box(&wire), true, &mut out, 1 << 20);
            inflater.reset();
            r
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = mask, decode, handshake, utf8, reader, deflate
}
criterion_main!(benches);
