//! Durable boxes in object storage (issue "beyond one machine"), against a local SeaweedFS —
//! the one `WASMBOX_S3_URL` names, or one this benchmark starts with `scripts/s3-server` — each
//! beside its floor measured in the same run through `object_store` on the same server:
//!
//! 1. Migrate a 64 MiB box: `release()` on host A, `open` on host B, first message answered —
//!    goal ≤ 2× (upload + download of 64 MiB).
//! 2. `Sync` messages of one box with ≤ 10 ms batching (`submit`, `deliver` once the oldest
//!    held output waited 10 ms): messages per second — goal ≥ 5,000 — and the p50/p99 latency
//!    from `submit` to delivery; beside one small upload.
//! 3. Take over an expired lease and resume a 1 MiB box (the owner, a child process, killed
//!    with SIGKILL): from the moment the lease expired to the first message answered on the
//!    new host — goal ≤ 50 ms (+ the lease timeout, which this leaves out).
//!
//! Run: `cargo bench -p wasmbox-host --bench s3`.

mod common;

use common::{bench, fmt_ns, op, report_abs, report_ratio, say};
use criterion::{BenchmarkGroup, Criterion, SamplingMode, measurement::WallTime};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wasmbox_host::durable::{BoxStore, Durability, DurableBox};
use wasmbox_host::{DurableError, Error, WasmBoxModule};

const SAMPLES: usize = 10;
const HOLDER_ENV: &str = "WASMBOX_BENCH_HOLDER";

fn configure(group: &mut BenchmarkGroup<'_, WallTime>) {
    group
        .sample_size(SAMPLES)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
}

/// The server: `WASMBOX_S3_URL`'s, or one started here (stopped when this is dropped).
struct Server {
    endpoint: String,
    bucket: String,
    pid: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

fn script() -> std::path::PathBuf {
    common::root().join("scripts/s3-server")
}

impl Server {
    fn get() -> Server {
        if let Ok(url) = std::env::var("WASMBOX_S3_URL") {
            let (endpoint, bucket) = split(&url);
            return Server {
                endpoint,
                bucket,
                pid: None,
                _dir: None,
            };
        }
        let run = |args: &[&str]| {
            let out = Command::new(script())
                .args(args)
                .stderr(Stdio::inherit())
                .output()
                .expect("scripts/s3-server");
            assert!(out.status.success(), "scripts/s3-server {args:?} failed");
            String::from_utf8(out.stdout)
                .expect("utf-8")
                .trim()
                .to_string()
        };
        run(&["install"]);
        let port = run(&["port"]);
        let dir = tempfile::tempdir().expect("server dir");
        let pid = run(&["start", &dir.path().to_string_lossy(), &port]);
        Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: "wasmbox-test".into(),
            pid: Some(pid),
            _dir: Some(dir),
        }
    }

    /// A store under a fresh prefix, as host `holder`, with `query` settings.
    fn url(&self, prefix: &str, query: &str) -> String {
        format!(
            "s3://{}/{prefix}?endpoint={}{query}",
            self.bucket, self.endpoint
        )
    }

    fn client(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            object_store::aws::AmazonS3Builder::new()
                .with_bucket_name(&self.bucket)
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_region("us-east-1")
                .with_skip_signature(true)
                .build()
                .expect("client"),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(pid) = &self.pid {
            let _ = Command::new(script()).args(["stop", pid]).status();
        }
    }
}

fn split(url: &str) -> (String, String) {
    let rest = url.strip_prefix("s3://").expect("s3:// URL");
    let (path, query) = rest.split_once('?').expect("?endpoint=");
    let endpoint = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("endpoint="))
        .expect("endpoint");
    (
        endpoint.to_string(),
        path.split('/').next().unwrap_or("").to_string(),
    )
}

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("bench-{tag}-{}-{nanos}", std::process::id())
}

/// Figure 1.
fn migrate(c: &mut Criterion, server: &Server, poke: &WasmBoxModule) {
    let mut group = c.benchmark_group("s3_migrate");
    configure(&mut group);
    let client = server.client();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let path = object_store::path::Path::from(format!("{}/floor-64MiB", unique("floor")));
    let bytes = common::random_bytes(64 << 20, 3);
    let floor_ns = bench(
        &mut group,
        "floor_upload_download_64MiB",
        SAMPLES,
        |iters| {
            let start = Instant::now();
            for _ in 0..iters {
                rt.block_on(async {
                    let upload = client.put_multipart(&path).await.expect("put");
                    let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, 8 << 20);
                    w.write(&bytes);
                    w.finish().await.expect("finish");
                    let got = client
                        .get(&path)
                        .await
                        .expect("get")
                        .bytes()
                        .await
                        .expect("bytes");
                    assert_eq!(got.len(), bytes.len());
                });
            }
            start.elapsed()
        },
    );
    let prefix = unique("migrate");
    let hosts = [
        BoxStore::open_url(&server.url(&prefix, "&holder=A")).expect("A"),
        BoxStore::open_url(&server.url(&prefix, "&holder=B")).expect("B"),
    ];
    let mut current = Some(common::poke_box(poke, &hosts[0], "m"));
    let mut on = 0;
    let mut round = 0u8;
    let migrate_ns = bench(&mut group, "migrate_64MiB_box", SAMPLES, |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            current.take().expect("box").release().expect("release");
            on = 1 - on;
            let mut b = DurableBox::<Vec<u8>, u8>::builder(poke, &hosts[on], "m")
                .checkpoint_every(0)
                .checkpoint_bytes(u64::MAX)
                .open(|_, _| {})
                .expect("open on the other host");
            round = round.wrapping_add(1) | 1;
            b.message(&op(0, round, 65536 * 3, 4096).to_vec())
                .expect("first message");
            current = Some(b);
        }
        start.elapsed()
    });
    drop(current);
    group.finish();
    report_ratio(
        "s3/migrate a 64 MiB box (release on A, open on B, first message)",
        migrate_ns,
        floor_ns,
        "upload + download of 64 MiB through object_store",
        2.0,
    );
}

/// Figure 2.
fn sync_throughput(c: &mut Criterion, server: &Server, echo: &WasmBoxModule) {
    let mut group = c.benchmark_group("s3_sync");
    configure(&mut group);
    let client = server.client();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let path = object_store::path::Path::from(format!("{}/floor-small", unique("floor")));
    let upload_ns = bench(&mut group, "floor_upload_100B", SAMPLES, |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            rt.block_on(client.put(&path, PutPayload::from(vec![7u8; 100])))
                .expect("put");
        }
        start.elapsed()
    });
    let store =
        BoxStore::open_url(&server.url(&unique("sync"), "&batch_delay_ms=10")).expect("store");
    let delivered: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
    let d = Arc::clone(&delivered);
    let mut b = DurableBox::<String, String>::builder(echo, &store, "s")
        .durability(Durability::Sync)
        .checkpoint_every(0)
        .checkpoint_bytes(u64::MAX)
        .open(move |_, _| d.lock().expect("lock").push(Instant::now()))
        .expect("open");
    let text = "0123456789abcdef".to_string();
    let mut latencies: Vec<f64> = Vec::new();
    let batch = Duration::from_millis(10);
    let per_message_ns = bench(&mut group, "sync_message_batched_10ms", SAMPLES, |iters| {
        let mut submitted: Vec<Instant> = Vec::with_capacity(iters as usize);
        delivered.lock().expect("lock").clear();
        let start = Instant::now();
        for _ in 0..iters {
            submitted.push(Instant::now());
            b.submit(&text).expect("submit");
            let oldest = submitted[delivered.lock().expect("lock").len()];
            if oldest.elapsed() >= batch {
                b.deliver().expect("deliver");
            }
        }
        b.deliver().expect("deliver");
        let took = start.elapsed();
        let got = delivered.lock().expect("lock");
        assert_eq!(got.len(), submitted.len(), "every output delivered");
        latencies.extend(
            got.iter()
                .zip(&submitted)
                .map(|(d, s)| d.duration_since(*s).as_nanos() as f64),
        );
        took
    });
    group.finish();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    if let (Some(ns), Some(up), false) = (per_message_ns, upload_ns, latencies.is_empty()) {
        let rate = 1e9 / ns;
        say(format!(
            "SUMMARY s3/Sync messages of one box, batched <= 10 ms: {rate:.0} messages/s | latency p50 {} p99 {} | floor (one 100 B upload) {} | goal >= 5,000 messages/s: {}",
            fmt_ns(pct(0.5)),
            fmt_ns(pct(0.99)),
            fmt_ns(up),
            if rate >= 5_000.0 { "MET" } else { "MISSED" }
        ));
    }
}

/// The child process of figure 3: owns a box, then waits to be killed.
fn hold(url: &str, name: &str) {
    let counter = WasmBoxModule::from_file(common::guest("counter")).expect("counter");
    let store = BoxStore::open_url(url).expect("store");
    let mut b = DurableBox::<String, String>::builder(&counter, &store, name)
        .open(|_, _| {})
        .expect("open");
    b.message("up").expect("message");
    b.checkpoint().expect("checkpoint");
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Figure 3.
fn takeover(c: &mut Criterion, server: &Server, counter: &WasmBoxModule) {
    let mut group = c.benchmark_group("s3_takeover");
    configure(&mut group);
    let ttl_ms = 300u64;
    let prefix = unique("takeover");
    let url_a = server.url(&prefix, &format!("&holder=A&lease_ttl_ms={ttl_ms}"));
    let store_b = BoxStore::open_url(&server.url(&prefix, "&holder=B")).expect("B");
    let client = server.client();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut n = 0u32;
    let ns = bench(
        &mut group,
        "take_over_expired_lease_1MiB",
        SAMPLES,
        |iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let name = format!("t{n}");
                let mut child: Child = Command::new(std::env::current_exe().expect("exe"))
                    .env(HOLDER_ENV, format!("{url_a} {name}"))
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("holder");
                let mut line = String::new();
                BufReader::new(child.stdout.take().expect("stdout"))
                    .read_line(&mut line)
                    .expect("ready");
                assert_eq!(line.trim(), "ready");
                child.kill().expect("SIGKILL");
                child.wait().expect("wait");
                // When the lease expires: its last renewal (as the head says) + its time-to-live.
                let head = object_store::path::Path::from(format!("{prefix}/{name}/head"));
                let bytes = rt
                    .block_on(async { client.get(&head).await?.bytes().await })
                    .expect("head");
                let head: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
                let expires_ms = head["renewed_ms"].as_u64().expect("renewed") + ttl_ms;
                let b = loop {
                    match DurableBox::<String, String>::builder(counter, &store_b, &name)
                        .open(|_, _| {})
                    {
                        Err(Error::Durable(DurableError::Locked { .. })) => {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        other => break other.expect("take over"),
                    }
                };
                let mut b = b;
                b.message("up").expect("message");
                let done = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .expect("clock")
                    .as_nanos() as u64;
                total += Duration::from_nanos(done.saturating_sub(expires_ms * 1_000_000));
            }
            total
        },
    );
    group.finish();
    report_abs(
        "s3/take over an expired lease and resume a 1 MiB box, beyond the lease timeout",
        ns,
        Some(ttl_ms as f64 * 1e6),
        "the lease timeout used",
        50_000_000.0,
    );
}

fn main() {
    if let Ok(holder) = std::env::var(HOLDER_ENV) {
        let (url, name) = holder.split_once(' ').expect("url name");
        hold(url, name);
        return;
    }
    let server = Server::get();
    let mut c = Criterion::default().configure_from_args();
    let echo = WasmBoxModule::from_file(common::guest("echo")).expect("echo");
    let counter = WasmBoxModule::from_file(common::guest("counter")).expect("counter");
    let poke =
        WasmBoxModule::from_bytes(&wat::parse_str(common::POKE).expect("poke")).expect("poke");
    sync_throughput(&mut c, &server, &echo);
    takeover(&mut c, &server, &counter);
    migrate(&mut c, &server, &poke);
    c.final_summary();
    common::print_summary("s3");
    drop(server);
}
