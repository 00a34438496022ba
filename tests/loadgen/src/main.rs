//! Load generator for pgws: opens many WebSocket clients across tenants, sends paced NOTIFYs carrying
//! their send time, and reports deliveries per second, end-to-end latency percentiles, losses, and the
//! server's CPU and memory read from /proc.
//!
//! ```text
//! loadgen --ws ws://127.0.0.1:8080/ws --database-url 'host=… dbname=…' --server-pid <pid> \
//!         --clients 1000 --tenants 10 --rate 100 --seconds 10
//! loadgen … --rate 0 --seconds 30        # idle: only connect and measure memory per connection
//! loadgen --protocol socketio --ws ws://127.0.0.1:8080 … # socket.io clients on one channel
//! ```
//! The server must accept `?tenant=` (`--insecure-tenant-param`); frames may be raw or pgws-shaped.
//! With `--protocol socketio` the clients speak socket.io v5 over WebSocket to `/socket.io/`, subscribe
//! to `--channel`, and the NOTIFYs carry bare JSON on that channel; the server must admit them
//! without a token (`--socketio-anonymous-tenant`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug, Clone)]
#[command(about = "Load generator for pgws")]
struct Args {
    /// WebSocket endpoint of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    ws: String,
    /// Database the server LISTENs on.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Channel to NOTIFY on.
    #[arg(long, default_value = "pgwebsocket")]
    channel: String,
    /// Server process to read CPU and RSS from (/proc/<pid>).
    #[arg(long)]
    server_pid: Option<u32>,
    /// WebSocket clients to open.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Tenants the clients (and messages) are spread over.
    #[arg(long, default_value_t = 1)]
    tenants: usize,
    /// NOTIFYs per second in all (0: idle run, no messages).
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// NOTIFYs per transaction (1: single-NOTIFY commits).
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// Producer connections the rate is spread over.
    #[arg(long, default_value_t = 4)]
    producers: u64,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Spread client connections over this many 127.0.0.x source addresses (ports run out past ~28k
    /// connections per source address).
    #[arg(long, default_value_t = 1)]
    source_addrs: u8,
    /// First source address used is 127.0.0.(1 + this); give each generator process its own range.
    #[arg(long, default_value_t = 0)]
    source_offset: u8,
    /// Open every client at the same moment instead of one after another (a connect burst).
    #[arg(long)]
    at_once: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// The server's `/metrics` address (`127.0.0.1:8080`): reports how many NOTIFYs the server
    /// counted as received during the run (`pgws_notifications_received_total`).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// What the clients speak: pgws WebSocket at `--ws`, or socket.io at `<--ws>/socket.io/`.
    #[arg(long, value_enum, default_value_t = Protocol::Ws)]
    protocol: Protocol,
    /// Store messages with `pgws_publish` (durable streams; the server runs with `--streams`)
    /// instead of sending NOTIFYs.
    #[arg(long)]
    durable: bool,
    /// Catch-up run: store this many messages for tenant t0, then time one `pgws.v1` client that
    /// subscribes from offset 0 until its `recovered` report (needs `--stream-recover-max` at least
    /// this on the server).
    #[arg(long)]
    catch_up: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Protocol {
    Ws,
    Socketio,
}

/// Sends paced NOTIFY transactions from `--producers` connections for `--seconds`.
async fn produce(args: Args, sent: Arc<AtomicU64>) -> anyhow::Result<()> {
    let mut producers = Vec::new();
    for p in 0..args.producers.max(1) {
        let args = args.clone();
        let sent = sent.clone();
        producers.push(tokio::spawn(async move {
            let (client, conn) =
                tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            let per_producer = (args.rate as f64 / args.producers.max(1) as f64).max(0.001);
            let txn_every = Duration::from_secs_f64(args.batch as f64 / per_producer);
            // Producers take turns (each starts its share of a period later), so the asked rate
            // arrives evenly paced rather than as bursts of every producer at once.
            let phase = txn_every.mul_f64(p as f64 / args.producers.max(1) as f64);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, txn_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let end = Instant::now() + Duration::from_secs(args.seconds);
            let mut n = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                let sql = if args.batch == 1 {
                    n += 1;
                    let body = format!("{{\"ts\":{},\"p\":{p},\"n\":{n}}}", now_micros());
                    let tenant = (n * args.producers + p) % args.tenants as u64;
                    if args.durable {
                        format!("select pgws_publish('t{tenant}', NULL, '{body}')")
                    } else {
                        let payload = match args.protocol {
                            Protocol::Ws => format!("t{tenant},{body}"),
                            Protocol::Socketio => body,
                        };
                        format!("select pg_notify('{}', '{payload}')", args.channel)
                    }
                } else {
                    // One statement makes the whole batch inside Postgres: building and parsing a
                    // hundred statements a transaction was what limited the generator. Every payload
                    // differs (`n`), so Postgres does not fold any of them together.
                    let first = n + 1;
                    n += args.batch;
                    let tenant =
                        format!("'t' || ((g * {} + {p}) % {})", args.producers, args.tenants);
                    let body = format!("'{{\"ts\":{},\"p\":{p},\"n\":' || g || '}}'", now_micros());
                    if args.durable {
                        format!(
                            "select pgws_publish({tenant}, NULL, ({body})::jsonb) \
                             from generate_series({first}::bigint, {n}::bigint) g"
                        )
                    } else {
                        let address = match args.protocol {
                            Protocol::Ws => format!("{tenant} || ','"),
                            Protocol::Socketio => "''".into(),
                        };
                        format!(
                            "select pg_notify('{}', {address} || {body}) \
                             from generate_series({first}::bigint, {n}::bigint) g",
                            args.channel
                        )
                    }
                };
                client.batch_execute(&sql).await?;
                sent.fetch_add(args.batch, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for p in producers {
        p.await??;
    }
    Ok(())
}

/// A counter's value from the server's Prometheus `/metrics`, summed over its labels.
async fn scrape(addr: SocketAddr, name: &str) -> anyhow::Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// CPU time (ticks) and RSS (KiB) of a process.
fn proc_stats(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks, rss))
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The send time inside a frame: the number after the first `"ts":` — in `{"ts":…}` (raw),
/// `{"payload":{"ts":…}}` (pgws) or socket.io's `42["event",{"channel":…,"payload":{"ts":…}}]`. Found
/// by a byte search rather than a JSON parse: at a million frames a second the generator's own CPU
/// is what limits the measurement.
fn sent_at(text: &str) -> Option<u64> {
    let mut at = text.find("\"ts\":")? + 5;
    // A stored (jsonb) body comes back as `"ts": 123`.
    if text.as_bytes().get(at) == Some(&b' ') {
        at += 1;
    }
    let digits = text[at..].bytes().take_while(u8::is_ascii_digit).count();
    text[at..at + digits].parse().ok()
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// The next text frame, or an error naming what was awaited.
async fn next_text(ws: &mut Ws, what: &str) -> anyhow::Result<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Ok(t.to_string()),
            Ok(Some(Ok(_))) => continue,
            _ => anyhow::bail!("no {what}"),
        }
    }
}

/// socket.io v5 over WebSocket: Engine.IO open, namespace connect, `subscribe` to `channel`.
async fn socketio_handshake(ws: &mut Ws, channel: &str) -> anyhow::Result<()> {
    use futures_util::SinkExt;
    let open = next_text(ws, "engine.io open").await?;
    anyhow::ensure!(open.starts_with('0'), "expected an open packet, got {open}");
    ws.send(Message::Text("40".into())).await?;
    loop {
        let t = next_text(ws, "namespace connect").await?;
        if t.starts_with("40") {
            break;
        }
        anyhow::ensure!(!t.starts_with("44"), "connection refused: {t}");
    }
    let subscribe = serde_json::json!(["subscribe", {"channel": channel}]);
    ws.send(Message::Text(format!("42{subscribe}").into()))
        .await?;
    loop {
        let t = next_text(ws, "subscribed").await?;
        if t.starts_with("42[\"subscribed\"") {
            return Ok(());
        }
        anyhow::ensure!(!t.starts_with("42[\"error\""), "subscribe refused: {t}");
    }
}

/// What one reader received.
struct Seen {
    count: u64,
    latency: Histogram<u64>,
}

struct Totals {
    delivered: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    /// Latency per tenant, for runs over a few tenants (each tenant's figures show whether one
    /// tenant's load reached another).
    per_tenant: Mutex<Vec<Histogram<u64>>>,
}

/// Runs over at most this many tenants also report latency per tenant.
const PER_TENANT_REPORT: usize = 8;

async fn open_client(args: &Args, i: usize) -> anyhow::Result<Ws> {
    let url = match args.protocol {
        Protocol::Ws => format!("{}?tenant=t{}", args.ws, i % args.tenants),
        Protocol::Socketio => format!(
            "{}/socket.io/?EIO=4&transport=websocket",
            args.ws.trim_end_matches('/')
        ),
    };
    let host: SocketAddr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .context("ws url")?
        .parse()
        .context("ws url must be ws://<ip>:<port>/…")?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    let last = 1 + args.source_offset as usize + i % args.source_addrs.max(1) as usize;
    let source = Ipv4Addr::new(127, 0, 0, last.min(254) as u8);
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(host).await?;
    stream.set_nodelay(true)?;
    // Small buffers: tungstenite's default 128 KiB read buffer per client would make 100k clients
    // cost the generator 12 GiB.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
    if args.protocol == Protocol::Socketio {
        socketio_handshake(&mut ws, &args.channel).await?;
    }
    Ok(ws)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(n) = args.catch_up {
        return catch_up(&args, n).await;
    }
    let idle_before = args.server_pid.and_then(proc_stats);

    // Connect every client first.
    let connect_started = Instant::now();
    let mut sockets = Vec::with_capacity(args.clients);
    if args.at_once {
        let opening = (0..args.clients).map(|i| {
            let args = &args;
            async move {
                open_client(args, i)
                    .await
                    .with_context(|| format!("client {i}"))
            }
        });
        for socket in futures_util::future::join_all(opening).await {
            sockets.push(socket?);
        }
    } else {
        for i in 0..args.clients {
            sockets.push(
                open_client(&args, i)
                    .await
                    .with_context(|| format!("client {i}"))?,
            );
        }
    }
    let connect_time = connect_started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_after = args.server_pid.and_then(proc_stats);

    let tenant_report = args.protocol == Protocol::Ws && args.tenants <= PER_TENANT_REPORT;
    let totals = Arc::new(Totals {
        delivered: AtomicU64::new(0),
        latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        per_tenant: Mutex::new(
            (0..if tenant_report { args.tenants } else { 0 })
                .map(|_| Histogram::new_with_bounds(1, 60_000_000, 3))
                .collect::<Result<_, _>>()?,
        ),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Each reader records into its own histogram: a lock or channel shared by a thousand readers,
    // touched per message, would measure the generator's contention instead of the server.
    let mut readers = Vec::new();
    for (i, ws) in sockets.into_iter().enumerate() {
        let tenant = i % args.tenants.max(1);
        let seen = Arc::new(Mutex::new(Seen {
            count: 0,
            latency: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
        }));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let (mut write, mut read) = ws.split();
            while let Some(Ok(msg)) = read.next().await {
                if let Message::Text(t) = msg {
                    // Engine.IO ping: answer, or the server drops the client.
                    if t.as_str() == "2" {
                        use futures_util::SinkExt;
                        let _ = write.send(Message::Text("3".into())).await;
                        continue;
                    }
                    if let Some(ts) = sent_at(&t) {
                        let latency = now_micros().saturating_sub(ts).max(1);
                        if let Ok(mut seen) = record.lock() {
                            let _ = seen.latency.record(latency);
                            seen.count += 1;
                        }
                    }
                }
            }
        });
        readers.push((tenant, seen, task));
    }

    // Watch Postgres' NOTIFY queue while producing: above 0 means the server's LISTEN connection is
    // not keeping up and Postgres is holding notifications for it.
    let received_before = match args.metrics_addr {
        Some(addr) => Some(scrape(addr, "pgws_notifications_received_total").await?),
        None => None,
    };
    let queue_peak = Arc::new(Mutex::new(0f64));
    let queue_watch = {
        let (client, conn) =
            tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let peak = queue_peak.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tick.tick() => {}
                }
                if let Ok(row) = client
                    .query_one("select pg_notification_queue_usage()", &[])
                    .await
                {
                    let usage: f64 = row.get(0);
                    if let Ok(mut p) = peak.lock() {
                        *p = p.max(usage);
                    }
                }
            }
        })
    };

    // Produce.
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let cpu_before = args.server_pid.and_then(proc_stats);
    if args.rate > 0 {
        // The producers get a runtime (and OS thread) of their own: on the shared runtime, ten
        // thousand busy readers delay their ticks and the rate sags below what was asked.
        let producer_args = args.clone();
        let producer_sent = sent.clone();
        let producing = std::thread::Builder::new()
            .name("producers".into())
            .spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(produce(producer_args, producer_sent))
            })?;
        tokio::task::spawn_blocking(move || producing.join())
            .await?
            .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    } else {
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    }
    let send_time = started.elapsed();
    let cpu_after = args.server_pid.and_then(proc_stats);
    // Let the last deliveries land, then count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = sent.load(Ordering::Relaxed);
    let per_tenant_clients = match args.protocol {
        Protocol::Ws => args.clients as f64 / args.tenants as f64,
        Protocol::Socketio => args.clients as f64,
    };
    let expected = (sent as f64 * per_tenant_clients).round() as u64;
    let received = match (args.metrics_addr, received_before) {
        (Some(addr), Some(before)) => {
            Some(scrape(addr, "pgws_notifications_received_total").await? - before)
        }
        _ => None,
    };
    let _ = stop_tx.send(true);
    for (tenant, seen, task) in readers {
        task.abort();
        let _ = task.await;
        let Ok(seen) = seen.lock() else { continue };
        totals.delivered.fetch_add(seen.count, Ordering::Relaxed);
        if let Ok(mut h) = totals.latency.lock() {
            let _ = h.add(&seen.latency);
        }
        if let Ok(mut per) = totals.per_tenant.lock() {
            if let Some(h) = per.get_mut(tenant) {
                let _ = h.add(&seen.latency);
            }
        }
    }
    let _ = queue_watch.await;
    let queue_peak = queue_peak.lock().map(|p| *p).unwrap_or_default();
    let delivered = totals.delivered.load(Ordering::Relaxed);
    let h = totals
        .latency
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock"))?
        .clone();
    let per_tenant = totals
        .per_tenant
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock"))?
        .clone();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;

    let ticks_per_sec = 100.0;
    let cpu = match (cpu_before, cpu_after) {
        (Some((a, _)), Some((b, _))) => {
            Some((b - a) as f64 / ticks_per_sec / send_time.as_secs_f64() * 100.0)
        }
        _ => None,
    };
    let idle_per_conn = match (idle_before, idle_after) {
        (Some((_, a)), Some((_, b))) if args.clients > 0 => {
            Some((b as f64 - a as f64) * 1024.0 / args.clients as f64)
        }
        _ => None,
    };
    let report = serde_json::json!({
        "clients": args.clients,
        "tenants": args.tenants,
        "rate": args.rate,
        "batch": args.batch,
        "seconds": send_time.as_secs_f64(),
        "connect_seconds": connect_time.as_secs_f64(),
        "notifies_sent": sent,
        "notifies_per_sec": sent as f64 / send_time.as_secs_f64(),
        "server_received": received,
        "notify_queue_usage_peak": queue_peak,
        "deliveries": delivered,
        "expected_deliveries": expected,
        "lost": expected.saturating_sub(delivered),
        "deliveries_per_sec": delivered as f64 / send_time.as_secs_f64(),
        "latency_ms": {
            "p50": h.value_at_quantile(0.50) as f64 / 1000.0,
            "p99": h.value_at_quantile(0.99) as f64 / 1000.0,
            "p999": h.value_at_quantile(0.999) as f64 / 1000.0,
            "max": h.max() as f64 / 1000.0,
        },
        "latency_ms_per_tenant": per_tenant.iter().enumerate().map(|(t, h)| serde_json::json!({
            "tenant": format!("t{t}"),
            "p50": ms(h, 0.50),
            "p99": ms(h, 0.99),
            "max": h.max() as f64 / 1000.0,
        })).collect::<Vec<_>>(),
        "server_cpu_percent": cpu,
        "server_rss_kib": cpu_after.map(|(_, rss)| rss),
        "rss_bytes_per_idle_connection": idle_per_conn,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{:<30} {} × {}",
            "clients × tenants", args.clients, args.tenants
        );
        println!(
            "{:<30} {} /s (batch {})",
            "NOTIFY rate", args.rate, args.batch
        );
        println!("{:<30} {:.1} s", "sending", send_time.as_secs_f64());
        println!(
            "{:<30} {} ({:.0}/s)",
            "NOTIFYs sent",
            sent,
            sent as f64 / send_time.as_secs_f64()
        );
        if let Some(r) = received {
            println!("{:<30} {:.0}", "NOTIFYs the server received", r);
        }
        println!(
            "{:<30} {:.6}",
            "peak pg_notification_queue_usage()", queue_peak
        );
        println!(
            "{:<30} {} of {} ({} lost)",
            "deliveries",
            delivered,
            expected,
            expected.saturating_sub(delivered)
        );
        println!(
            "{:<30} {:.0}",
            "deliveries/s",
            delivered as f64 / send_time.as_secs_f64()
        );
        println!(
            "{:<30} p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms",
            "latency (commit → client)",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.value_at_quantile(0.999) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
        for (t, h) in per_tenant.iter().enumerate() {
            println!(
                "{:<30} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                format!("  tenant t{t}"),
                ms(h, 0.5),
                ms(h, 0.99),
                h.max() as f64 / 1000.0
            );
        }
        if let Some(cpu) = cpu {
            println!("{:<30} {:.0} % of one core", "server CPU", cpu);
        }
        if let Some((_, rss)) = cpu_after {
            println!("{:<30} {} KiB", "server RSS", rss);
        }
        if let Some(b) = idle_per_conn {
            println!("{:<30} {:.0} bytes", "RSS per idle connection", b);
        }
    }
    Ok(())
}

/// `--catch-up n`: stores `n` messages for t0, then times one `pgws.v1` client that recovers them all
/// from offset 0.
async fn catch_up(args: &Args, n: u64) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let stored = Instant::now();
    let mut first = 1;
    while first <= n {
        let last = (first + 9_999).min(n);
        client
            .batch_execute(&format!(
                "select pgws_publish('t0', NULL, ('{{\"n\":' || g || ',\"pad\":\"{}\"}}')::jsonb) \
                 from generate_series({first}::bigint, {last}::bigint) g",
                "x".repeat(100)
            ))
            .await?;
        first = last + 1;
    }
    let store_time = stored.elapsed();
    let epoch: String = client
        .query_one("select epoch from pgws_stream where tenant = 't0'", &[])
        .await?
        .get(0);
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("{}?tenant=t0", args.ws).into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "pgws.v1".parse()?);
    let host = args
        .ws
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .context("ws url")?;
    let stream = tokio::net::TcpStream::connect(host).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream).await?;
    next_text(&mut ws, "welcome").await?;
    let started = Instant::now();
    use futures_util::SinkExt;
    ws.send(Message::Text(
        serde_json::json!({"type": "subscribe", "topics": [], "since": {"epoch": epoch, "offset": 0}})
            .to_string()
            .into(),
    ))
    .await?;
    let mut replayed = 0u64;
    let report = loop {
        let text = next_text(&mut ws, "a replayed message").await?;
        // Control frames have a `type` (anywhere among their keys); the stored bodies here do not.
        if text.contains("\"type\":\"recovered\"") {
            break text;
        }
        if !text.contains("\"type\":") {
            replayed += 1;
        }
    };
    let took = started.elapsed();
    let rate = replayed as f64 / took.as_secs_f64();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"stored": n, "replayed": replayed, "seconds": took.as_secs_f64(), "per_second": rate})
        );
    } else {
        println!(
            "stored {n} messages (~140 B bodies) in {:.1} s",
            store_time.as_secs_f64()
        );
        println!(
            "replayed {replayed} to one reconnecting client in {:.2} s: {rate:.0} messages/s",
            took.as_secs_f64()
        );
        println!("report: {report}");
    }
    Ok(())
}
