//! End-to-end echo round trips over loopback: the uringws client on this thread's tokio-uring
//! runtime against a one-thread uringws server, for 20 B, 1 KiB and 64 KiB messages, one
//! message in flight (latency-bound) and 16 in flight (throughput-bound); and 1 MiB messages
//! echoed with `recv`/`send` (one copy into the send queue) against `recv_owned`/`send_owned`
//! (written from the buffer they were read into).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use uringws::{client, Message, WebSocket};

fn echo_server(owned: bool) -> Option<uringws::RunningServer> {
    let server = uringws::Server::bind("127.0.0.1:0").ok()?.threads(1);
    match server.start(move |ws: WebSocket| async move {
        let (mut rx, tx) = ws.split();
        if owned {
            while let Some(msg) = rx.recv_owned().await? {
                tx.send_owned(msg).await?;
            }
        } else {
            while let Some(msg) = rx.recv().await? {
                tx.send(msg).await?;
            }
        }
        Ok(())
    }) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("skipping the end-to-end bench: {e}");
            None
        }
    }
}

fn bench(c: &mut Criterion) {
    let (Some(server), Some(owned)) = (echo_server(false), echo_server(true)) else {
        return;
    };
    let rt = uringws::client::Runtime::new().expect("io_uring runtime");
    let mut group = c.benchmark_group("e2e_echo");
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    let cases = [20usize, 1024, 64 << 10]
        .into_iter()
        .flat_map(|size| [(size, 1, false), (size, 16, false)])
        .chain([(1 << 20, 1, false), (1 << 20, 1, true)]);
    for (size, in_flight, owned_echo) in cases {
        let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let addr = if owned_echo {
            owned.local_addr()
        } else {
            server.local_addr()
        };
        let url = format!("ws://{addr}/");
        {
            group.throughput(Throughput::Bytes((size * in_flight) as u64));
            let name = match owned_echo {
                true => format!("{in_flight}_in_flight_owned_echo"),
                false => format!("{in_flight}_in_flight"),
            };
            let id = BenchmarkId::new(name, size);
            group.bench_with_input(id, &payload, |b, payload| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let ws = client::connect(&url).await.expect("connect");
                        let (mut rx, tx) = ws.split();
                        let start = Instant::now();
                        for _ in 0..iters {
                            for _ in 0..in_flight {
                                tx.send_binary(payload).await.expect("send");
                            }
                            for _ in 0..in_flight {
                                match rx.recv().await.expect("recv") {
                                    Some(Message::Binary(b)) => assert_eq!(b.len(), payload.len()),
                                    other => panic!("unexpected {other:?}"),
                                }
                            }
                        }
                        start.elapsed()
                    })
                });
            });
        }
    }
    group.finish();
    drop(server.shutdown());
    drop(owned.shutdown());
}

criterion_group!(benches, bench);
criterion_main!(benches);
