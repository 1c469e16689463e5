//! Which JSON crate `Message::json` uses, measured: serde_json against simd-json (its serde
//! API, which needs a mutable copy of the payload, since a received message is handed out as
//! a shared slice), on a chat message (~80 bytes) and 1 KiB of records, into a typed struct.
//!
//! Run with `cargo bench --bench json`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde::Deserialize;

#[derive(Deserialize)]
#[allow(dead_code)]
struct Chat {
    #[serde(rename = "type")]
    kind: String,
    room: String,
    name: String,
    text: String,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Record {
    id: u64,
    user: String,
    room: String,
    text: String,
    ts: u64,
}

fn parse<T: for<'de> Deserialize<'de>>(c: &mut Criterion, name: &str, doc: &[u8]) {
    let mut group = c.benchmark_group("json");
    group.throughput(Throughput::Bytes(doc.len() as u64));
    group.bench_function(BenchmarkId::new("serde_json", name), |b| {
        b.iter(|| serde_json::from_slice::<T>(black_box(doc)).unwrap())
    });
    let mut copy = doc.to_vec();
    group.bench_function(BenchmarkId::new("simd_json", name), |b| {
        b.iter(|| {
            copy.clear();
            copy.extend_from_slice(black_box(doc));
            simd_json::serde::from_slice::<T>(&mut copy).unwrap()
        })
    });
    group.finish();
}

fn json(c: &mut Criterion) {
    let chat =
        br#"{"type":"message","room":"lobby","name":"ann","text":"hello everyone, how are you?"}"#;
    parse::<Chat>(c, "chat_message", chat);
    let mut records = String::from("[");
    let mut i = 0;
    while records.len() < 1000 {
        records.push_str(&format!(
            r#"{{"id":{i},"user":"user-{}","room":"lobby","text":"hello world","ts":{}}},"#,
            i % 97,
            1_700_000_000 + i
        ));
        i += 1;
    }
    records.pop();
    records.push(']');
    parse::<Vec<Record>>(c, "1KiB_records", records.as_bytes());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = json
}
criterion_main!(benches);
