//! Criterion micro-benchmarks of the codec (issue 5): decoding the capture's 300-bar answer into
//! bars, and encoding one `chart-batch` event, each beside plain `serde_json` reading and writing
//! of the same bytes. The workloads are shared with `chartgate-bench codec`; the capture is read
//! from `tests/fixtures`.
//!
//! ```sh
//! cargo bench --bench codec
//! ```

use std::hint::black_box;

use chartgate::domain::BarsFormat;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

#[allow(dead_code)]
#[path = "../src/codec.rs"]
mod codec;

fn decode(c: &mut Criterion) {
    let inputs = codec::load().expect("the capture in tests/fixtures");
    let mut group = c.benchmark_group("decode_300_bar_answer");
    group.throughput(Throughput::Bytes(inputs.message.len() as u64));
    group.bench_function("chartgate_into_bars", |b| {
        b.iter(|| codec::decode_answer(black_box(&inputs.message)))
    });
    group.bench_function("serde_json_value", |b| {
        b.iter(|| codec::decode_reference(black_box(&inputs.payloads)))
    });
    group.bench_function("serde_json_ignored_any", |b| {
        b.iter(|| codec::scan_reference(black_box(&inputs.payloads)))
    });
    group.finish();

    let update = std::slice::from_ref(&inputs.series_update);
    let mut group = c.benchmark_group("decode_timescale_update_packet");
    group.throughput(Throughput::Bytes(update[0].len() as u64));
    group.bench_function("chartgate_into_bars", |b| {
        b.iter(|| codec::decode_series_update(black_box(&update[0])))
    });
    group.bench_function("serde_json_ignored_any", |b| {
        b.iter(|| codec::scan_reference(black_box(update)))
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let inputs = codec::load().expect("the capture in tests/fixtures");
    let cached = codec::cached_charts(&inputs);
    let event = codec::encode_batch(&cached, BarsFormat::Objects);
    let value: serde_json::Value =
        serde_json::from_str(&codec::event_json(&event)).expect("the event is JSON");
    let mut group = c.benchmark_group("encode_chart_batch");
    group.throughput(Throughput::Bytes(event.len() as u64));
    group.bench_function("chartgate_cached_json_shared", |b| {
        b.iter(|| codec::encode_batch(black_box(&cached), BarsFormat::Objects))
    });
    group.bench_function("chartgate_cached_json_flattened", |b| {
        b.iter(|| codec::encode_batch(black_box(&cached), BarsFormat::Objects).to_bytes())
    });
    group.bench_function("chartgate_fresh_charts", |b| {
        b.iter_batched(
            || codec::cached_charts(&inputs),
            |fresh| codec::encode_batch(&fresh, BarsFormat::Objects),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("serde_json_value_to_string", |b| {
        b.iter(|| codec::encode_reference(black_box(&value)))
    });
    group.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
