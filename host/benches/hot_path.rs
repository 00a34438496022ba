//! Microbenchmarks of the per-message hot path: envelope parse, frame encode, and one guest call per
//! example guest (warm instance, ~200-byte JSON body).
//!
//! `cargo bench -p pgws --bench hot_path` — builds every language's example guests first
//! (`guest/languages`).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pgws::envelope::{Envelope, JsonBody, TenantId};
use pgws::frame::{self, FrameFormat};
use pgws::guest::{GuestInstance, GuestLimits, GuestRuntime, NotificationRef};
use pgws::hub::{Audience, Delivery, Durable, Hub, TopicFilter};

/// A ~200-byte body with a secret field for the reshaper and a `kind` for the router.
const BODY: &str = r#"{"id":12345,"kind":"orders","usr":"ann","password":"hunter2","amount":1999,"currency":"EUR","items":[{"sku":"A-1","qty":2},{"sku":"B-7","qty":1}],"note":"deliver after 5pm, ring twice"}"#;

#[path = "../../tests/e2e/harness/languages.rs"]
mod languages;

fn envelope(c: &mut Criterion) {
    let payload = format!("acme/orders,{BODY}");
    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function("parse_200B", |b| b.iter(|| Envelope::parse(&payload)));
    g.finish();
}

fn fanout(c: &mut Criterion) {
    let body = JsonBody::parse(BODY).expect("json");
    let id = uuid::Uuid::new_v4();
    let mut g = c.benchmark_group("frame");
    g.bench_function("encode_pgws", |b| {
        b.iter(|| frame::encode(FrameFormat::Pgws, "pgwebsocket", None, 1, None, &id, &body))
    });
    g.bench_function("encode_raw", |b| {
        b.iter(|| frame::encode(FrameFormat::Raw, "pgwebsocket", None, 1, None, &id, &body))
    });
    g.finish();

    // A transaction's 10 messages to 1,000 sessions of a tenant: encode once per message, one
    // vectored write per session into a real socket (drained by a reader task on another thread).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hub = Arc::new(Hub::new(1 << 20));
    let admission = Arc::new(pgws::admission::Admission::default());
    let tenant = TenantId::parse("acme").expect("tenant");
    let _regs: Vec<_> = (0..1000)
        .map(|_| {
            let ticket = admission.admit(&tenant).expect("place");
            let reg = hub.register(
                ticket,
                &tenant,
                FrameFormat::Pgws,
                TopicFilter::All,
                Durable::After(None),
                None,
            );
            let (server, mut client) = rt.block_on(async {
                let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let (server, _) = listener.accept().await.expect("accept");
                (server, client)
            });
            reg.outbox.attach(server);
            rt.spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while tokio::io::AsyncReadExt::read(&mut client, &mut buf)
                    .await
                    .is_ok_and(|n| n > 0)
                {}
            });
            reg
        })
        .collect();
    let batch: Vec<Delivery> = (0..10)
        .map(|seq| Delivery {
            position: None,
            tenant: tenant.clone(),
            audience: Audience::Sessions,
            topic: None,
            seq,
            id: uuid::Uuid::new_v4(),
            channel: Arc::from("pgwebsocket"),
            body: body.clone(),
        })
        .collect();
    let mut g = c.benchmark_group("hub");
    g.throughput(Throughput::Elements(10 * 1000));
    g.bench_function("publish_10_to_1000_sessions", |b| {
        b.iter(|| hub.publish(&batch))
    });
    g.finish();
}

fn guests(c: &mut Criterion) {
    let runtime = GuestRuntime::new(GuestLimits::default(), None).expect("runtime");
    // Guest calls are async (they yield every epoch tick); a current-thread runtime drives them
    // the way a guest thread does.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    let n = NotificationRef {
        tenant: "acme",
        topic: None,
        channel: "pgwebsocket",
        body: BODY,
    };
    for language in languages::languages() {
        let dir = languages::build(&language);
        let mut g = c.benchmark_group(format!("guest_call_{language}"));
        for name in ["passthrough", "validator", "reshaper", "router"] {
            let bytes = std::fs::read(dir.join(format!("{name}.wasm"))).expect("guest built");
            let module = runtime.compile(&bytes).expect("guest compiles");
            let mut instance = rt
                .block_on(GuestInstance::new(&runtime, &module, "acme"))
                .expect("instance");
            g.bench_function(name, |b| {
                b.iter(|| rt.block_on(instance.on_notify(&runtime, &n)).expect("call"))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, envelope, fanout, guests);
criterion_main!(benches);
