//! Durable boxes in S3-compatible object storage, one writer at a time.
//!
//! Objects in a bucket cannot be appended to, renamed atomically or locked, so a box is kept
//! as a set of immutable **parts** and one mutable **head** object:
//!
//! - `<prefix><box>/head` records who owns the box (a lease: holder, a fencing **epoch**
//!   that grows with each new owner, when it was last renewed and for how long it holds), and
//!   the **manifest**: which parts make up each of the box's objects (a checkpoint is one part;
//!   a journal segment is the parts uploaded by its flushes, in order).
//! - `<prefix><box>/<object>.e<epoch>.p<n>` are the parts. Their names carry the writer's
//!   epoch, so two owners never write the same name.
//!
//! Every change to a box's history is a part uploaded first, then the head replaced with a
//! conditional write (`If-Match` on the ETag the owner last saw). The head is the commit
//! point: a part the head does not name is not part of the box. An owner that lost its lease
//! (it was frozen past its expiry and another host took the box over) fails that conditional
//! write and gets [`DurableError::NotOwner`]; what it uploaded is never named by the head
//! (a new owner deletes such orphans when it takes over). A live owner renews its lease in the
//! background; a lease not renewed for its time-to-live may be taken over, with a conditional
//! write too, so two hosts racing for a box cannot both win. Expiry is judged by the clocks of
//! the hosts, which must agree to well within the time-to-live.

use super::store::{Appender, Backend, BoxStore};
use crate::error::{DurableError, Error};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Parts at least this large are uploaded in several pieces (multipart upload).
const MULTIPART_FROM: usize = 16 << 20;
const HEAD: &str = "head";

/// Settings for a store in an S3-compatible bucket; [`S3Options::from_url`] reads them from
/// `s3://bucket/prefix?endpoint=…`. Credentials and the region come from the usual
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` and
/// `AWS_ENDPOINT_URL` variables unless set here; without credentials, requests go unsigned
/// (a local server that allows anonymous access).
#[derive(Clone, Debug)]
pub struct S3Options {
    /// The bucket (3–63 characters).
    pub bucket: String,
    /// Where the store's boxes live in the bucket (`""` for the top; else without slashes at
    /// either end).
    pub prefix: String,
    /// The server, e.g. `http://127.0.0.1:8333`; AWS itself when `None`.
    pub endpoint: Option<String>,
    /// The region (`us-east-1` when neither this nor `AWS_REGION` says).
    pub region: Option<String>,
    /// Access key id and secret; from the environment when `None`.
    pub credentials: Option<(String, String)>,
    /// Allow plain HTTP (a local server). On by default for an `http://` endpoint.
    pub allow_http: bool,
    /// How long a lease holds without renewal; the owner renews it every third of that.
    pub lease_ttl: Duration,
    /// The longest a journal record waits before its part is uploaded with the records after
    /// it (the appends of a [`Durability::Buffered`](super::Durability::Buffered) box).
    pub batch_delay: Duration,
    /// This host's name in leases (default: host name, process id and a random number).
    pub holder: Option<String>,
}

impl S3Options {
    /// Defaults for a bucket: AWS or `AWS_ENDPOINT_URL`, a 10 s lease, a 10 ms batch delay.
    pub fn new(bucket: impl Into<String>) -> S3Options {
        S3Options {
            bucket: bucket.into(),
            prefix: String::new(),
            endpoint: None,
            region: None,
            credentials: None,
            allow_http: false,
            lease_ttl: Duration::from_secs(10),
            batch_delay: Duration::from_millis(10),
            holder: None,
        }
    }

    /// Reads `s3://bucket/prefix?endpoint=http://host:port&region=…&lease_ttl_ms=…&batch_delay_ms=…&holder=…`.
    ///
    /// # Errors
    /// [`Error::BadUrl`] naming what is wrong.
    pub fn from_url(url: &str) -> Result<S3Options, Error> {
        let bad = |why: &str| Error::BadUrl {
            url: url.to_string(),
            why: why.to_string(),
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("an object store URL starts with s3://"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if !(3..=63).contains(&bucket.len()) {
            return Err(bad("a bucket name has 3 to 63 characters"));
        }
        let mut options = S3Options::new(bucket);
        options.prefix = prefix.trim_matches('/').to_string();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| bad(&format!("`{pair}` is not key=value")))?;
            let millis = || {
                value
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| bad(&format!("{key} is a number of milliseconds")))
            };
            match key {
                "endpoint" => options.endpoint = Some(value.to_string()),
                "region" => options.region = Some(value.to_string()),
                "allow_http" => options.allow_http = value == "true",
                "lease_ttl_ms" => options.lease_ttl = millis()?,
                "batch_delay_ms" => options.batch_delay = millis()?,
                "holder" => options.holder = Some(value.to_string()),
                _ => return Err(bad(&format!("unknown setting `{key}`"))),
            }
        }
        if options.lease_ttl < Duration::from_millis(30) {
            return Err(bad("lease_ttl_ms is at least 30"));
        }
        Ok(options)
    }

    fn client(&self) -> Result<AmazonS3, Error> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&self.bucket);
        // A request must not outlast the lease it is made under: retries stop after half of
        // it (at most 10 s; each attempt at least 5 s), so a server that is down fails the
        // message instead of hanging it for object_store's default three minutes.
        let budget = (self.lease_ttl / 2).min(Duration::from_secs(10));
        // (Client options first: they carry `allow_http`, set below.)
        builder = builder
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig {
                    init_backoff: Duration::from_millis(20),
                    max_backoff: budget / 4,
                    base: 2.0,
                },
                max_retries: 5,
                retry_timeout: budget,
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_timeout(budget.max(Duration::from_secs(5)))
                    .with_connect_timeout(budget.max(Duration::from_millis(200)) / 4),
            );
        let endpoint = self
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        if let Some(endpoint) = &endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(self.allow_http || endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let region = self
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_string());
        builder = builder.with_region(region);
        match &self.credentials {
            Some((id, secret)) => {
                builder = builder
                    .with_access_key_id(id)
                    .with_secret_access_key(secret);
            }
            None if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() => {
                builder = builder.with_skip_signature(true);
            }
            None => {}
        }
        builder.build().map_err(|e| Error::BadUrl {
            url: format!("s3://{}/{}", self.bucket, self.prefix),
            why: e.to_string(),
        })
    }
}

/// The head of a box: its lease and its manifest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Head {
    holder: String,
    epoch: u64,
    /// The holder's clock (Unix milliseconds) when it last renewed the lease.
    renewed_ms: u64,
    ttl_ms: u64,
    /// Given up by its holder: anyone may take the box at once.
    released: bool,
    /// Each object's parts, in order, with their lengths.
    objects: BTreeMap<String, Vec<(String, u64)>>,
}

impl Head {
    fn expired(&self, now_ms: u64) -> bool {
        self.released || now_ms > self.renewed_ms.saturating_add(self.ttl_ms)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The object-storage backend: see the [module docs](self).
#[derive(Debug)]
pub(crate) struct S3Backend {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    client: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
    options: S3Options,
    holder: String,
    /// The heads of the boxes this store holds the lease of.
    held: Mutex<HashMap<String, Arc<Held>>>,
}

/// A box this store owns: its head as last written, and that write's ETag.
#[derive(Debug)]
struct Held {
    state: Mutex<HeldState>,
    next_part: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct HeldState {
    head: Head,
    etag: Option<String>,
    /// Set once another holder took the box: who.
    lost: Option<String>,
}

impl S3Backend {
    pub(crate) fn new(options: S3Options) -> Result<S3Backend, Error> {
        let client = options.client()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("wasmbox-s3")
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                path: "(object store runtime)".into(),
                source,
            })?;
        let holder = options.holder.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "host".to_string());
            // A random number: the standard library seeds each `RandomState` randomly.
            let nonce = std::hash::BuildHasher::hash_one(
                &std::collections::hash_map::RandomState::new(),
                now_ms(),
            );
            format!("{host}:{}:{nonce:016x}", std::process::id())
        });
        Ok(S3Backend {
            shared: Arc::new(Shared {
                client: Arc::new(client),
                runtime,
                options,
                holder,
                held: Mutex::default(),
            }),
        })
    }
}

impl Shared {
    fn path(&self, name: &str, object: &str) -> Path {
        let p = &self.options.prefix;
        if p.is_empty() {
            Path::from(format!("{name}/{object}"))
        } else {
            Path::from(format!("{p}/{name}/{object}"))
        }
    }

    fn url(&self, path: &Path) -> std::path::PathBuf {
        format!("s3://{}/{path}", self.options.bucket).into()
    }

    /// Runs one request about `path` — `request(client, path)` — on the store's runtime and
    /// waits for it (also from inside another async runtime's thread, which a `block_on`
    /// would refuse).
    fn call<T, F, Fut>(&self, path: &Path, request: F) -> object_store::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn ObjectStore>, Path) -> Fut,
        Fut: Future<Output = object_store::Result<T>> + Send + 'static,
    {
        let f = request(Arc::clone(&self.client), path.clone());
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().unwrap_or_else(|_| {
            Err(object_store::Error::Generic {
                store: "S3",
                source: "the request was dropped".into(),
            })
        })
    }

    fn io(&self, path: &Path, e: object_store::Error) -> Error {
        Error::Io {
            path: self.url(path),
            source: std::io::Error::other(e.to_string()),
        }
    }

    fn held(&self, name: &str) -> Option<Arc<Held>> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// A box this store holds, or [`DurableError::NotOwner`].
    fn owned(&self, name: &str) -> Result<Arc<Held>, Error> {
        self.held(name)
            .ok_or_else(|| not_owner(name, "(this store does not hold the box)"))
    }

    /// The head as stored, with its ETag (`None` for a box that does not exist).
    fn fetch_head(&self, name: &str) -> Result<Option<(Head, Option<String>)>, Error> {
        let path = self.path(name, HEAD);
        let got = self.call(&path, |client, p| async move {
            let r = client.get(&p).await?;
            let etag = r.meta.e_tag.clone();
            Ok((r.bytes().await?, etag))
        });
        match got {
            Ok((bytes, etag)) => {
                let head = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::Durable(DurableError::Corrupt {
                        file: path.to_string(),
                        offset: 0,
                        what: format!("not a box head: {e}"),
                    })
                })?;
                Ok(Some((head, etag)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.io(&path, e)),
        }
    }

    /// Writes a head conditionally: created if `etag` is `None`, else replacing that version.
    /// `Ok(None)` when the condition failed (someone else wrote it).
    fn put_head(
        &self,
        name: &str,
        head: &Head,
        etag: Option<String>,
    ) -> Result<Option<Option<String>>, Error> {
        let path = self.path(name, HEAD);
        let bytes = serde_json::to_vec(head).map_err(|e| Error::Io {
            path: self.url(&path),
            source: std::io::Error::other(e),
        })?;
        let mode = match etag {
            None => PutMode::Create,
            Some(e_tag) => PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag),
                version: None,
            }),
        };
        let put = self.call(&path, |client, p| async move {
            client
                .put_opts(&p, PutPayload::from(bytes), PutOptions::from(mode))
                .await
        });
        match put {
            Ok(r) => Ok(Some(r.e_tag)),
            Err(
                object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. }
                | object_store::Error::NotFound { .. },
            ) => Ok(None),
            Err(e) => Err(self.io(&path, e)),
        }
    }

    /// Changes the head of a box this store holds: `change` applied, the lease renewed, the
    /// head written only if nobody else wrote it since. A lost condition means another host
    /// took the box: [`DurableError::NotOwner`], now and for every later call.
    fn commit(&self, name: &str, mut change: impl FnMut(&mut Head)) -> Result<(), Error> {
        let held = self.owned(name)?;
        let mut st = held.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(holder) = &st.lost {
            return Err(not_owner(name, holder));
        }
        // One retry: a write whose answer was lost may have landed (the stored head is then
        // ours, with our epoch), which is not a lost lease.
        for _ in 0..2 {
            let mut next = st.head.clone();
            change(&mut next);
            next.renewed_ms = now_ms();
            match self.put_head(name, &next, st.etag.clone())? {
                Some(etag) => {
                    st.head = next;
                    st.etag = etag;
                    return Ok(());
                }
                None => match self.fetch_head(name)? {
                    Some((stored, etag))
                        if stored.holder == st.head.holder && stored.epoch == st.head.epoch =>
                    {
                        st.etag = etag;
                        st.head = stored;
                    }
                    other => {
                        let holder =
                            other.map_or_else(|| "(nobody: deleted)".into(), |h| h.0.holder);
                        st.lost = Some(holder.clone());
                        return Err(not_owner(name, &holder));
                    }
                },
            }
        }
        Err(Error::Io {
            path: self.url(&self.path(name, HEAD)),
            source: std::io::Error::other("the head changed under its owner twice"),
        })
    }

    /// Uploads a part (multipart when large) under a name nobody else uses.
    fn put_part(&self, name: &str, object: &str, bytes: Vec<u8>) -> Result<(String, u64), Error> {
        let held = self.owned(name)?;
        let epoch = held
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .head
            .epoch;
        let n = held
            .next_part
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = format!("{object}.e{epoch}.p{n}");
        let path = self.path(name, &key);
        let len = bytes.len() as u64;
        self.call(&path, |client, p| async move {
            if bytes.len() < MULTIPART_FROM {
                client.put(&p, PutPayload::from(bytes)).await?;
            } else {
                let upload = client.put_multipart(&p).await?;
                let mut write = object_store::WriteMultipart::new_with_chunk_size(upload, 8 << 20);
                write.write(&bytes);
                write.finish().await?;
            }
            Ok(())
        })
        .map_err(|e| self.io(&path, e))?;
        Ok((key, len))
    }

    fn delete_parts(&self, name: &str, parts: Vec<(String, u64)>) {
        for (key, _) in parts {
            // Best effort: a part the head no longer names is not part of the box.
            let _ = self.call(&self.path(name, &key), |client, p| async move {
                client.delete(&p).await
            });
        }
    }

    /// Every key under a box, relative to it.
    fn keys(&self, name: &str) -> Result<Vec<String>, Error> {
        let dir = self.path(name, "");
        let listed = self
            .call(&dir, |client, d| async move {
                client.list_with_delimiter(Some(&d)).await
            })
            .map_err(|e| self.io(&dir, e))?;
        Ok(listed
            .objects
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect())
    }
}

impl Held {
    /// An object's parts as this owner last committed them.
    fn parts(&self, object: &str) -> Option<Vec<(String, u64)>> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .head
            .objects
            .get(object)
            .cloned()
    }
}

fn not_owner(name: &str, holder: &str) -> Error {
    Error::Durable(DurableError::NotOwner {
        name: name.to_string(),
        holder: holder.to_string(),
    })
}

/// The lease of a box: renewed in the background while held, given up when dropped.
struct Lease {
    shared: Arc<Shared>,
    name: String,
    stop: Arc<(Mutex<bool>, Condvar)>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.stop.1.notify_all();
        if let Some(t) = self.renewer.take() {
            let _ = t.join();
        }
        // Give the box up so that another host need not wait for the lease to expire.
        let _ = self.shared.commit(&self.name, |h| h.released = true);
        self.shared
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.name);
    }
}

impl Backend for S3Backend {
    fn boxes(&self) -> Result<Vec<String>, Error> {
        let s = &self.shared;
        let prefix = Path::from(s.options.prefix.as_str());
        let listed = s
            .call(&prefix, |client, p| async move {
                // The whole bucket when there is no prefix.
                let p = (!p.as_ref().is_empty()).then_some(p);
                client.list_with_delimiter(p.as_ref()).await
            })
            .map_err(|e| s.io(&prefix, e))?;
        let mut names = Vec::new();
        for dir in &listed.common_prefixes {
            // A box is a prefix with a head (a server may list a prefix whose objects are gone).
            if let Some(name) = dir.filename()
                && super::store::check_name(name).is_ok()
                && s.fetch_head(name)?.is_some()
            {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn objects(&self, name: &str) -> Result<Vec<String>, Error> {
        if let Some(held) = self.shared.held(name) {
            let st = held.state.lock().unwrap_or_else(PoisonError::into_inner);
            return Ok(st.head.objects.keys().cloned().collect());
        }
        Ok(self
            .shared
            .fetch_head(name)?
            .map(|(h, _)| h.objects.into_keys().collect())
            .unwrap_or_default())
    }

    fn read(&self, name: &str, object: &str) -> Result<Vec<u8>, Error> {
        let s = &self.shared;
        let parts = match s.held(name) {
            Some(held) => held.parts(object),
            None => s
                .fetch_head(name)?
                .and_then(|(h, _)| h.objects.get(object).cloned()),
        };
        let parts = parts.ok_or_else(|| Error::Io {
            path: s.url(&s.path(name, object)),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        // The head is untrusted input like the parts: its lengths are checked against what
        // arrives, never used to allocate.
        let mut bytes = Vec::new();
        for (key, len) in parts {
            let path = s.path(name, &key);
            let got = s
                .call(&path, |client, p| async move {
                    client.get(&p).await?.bytes().await
                })
                .map_err(|e| s.io(&path, e))?;
            if got.len() as u64 != len {
                return Err(Error::Durable(DurableError::Corrupt {
                    file: object.to_string(),
                    offset: bytes.len() as u64,
                    what: format!(
                        "its part {key} has {} bytes, the box's head says {len}",
                        got.len()
                    ),
                }));
            }
            bytes.extend_from_slice(&got);
        }
        Ok(bytes)
    }

    fn write(&self, name: &str, object: &str, bytes: &[u8]) -> Result<(), Error> {
        let part = self.shared.put_part(name, object, bytes.to_vec())?;
        let mut old = Vec::new();
        self.shared.commit(name, |h| {
            old = h
                .objects
                .insert(object.to_string(), vec![part.clone()])
                .unwrap_or_default();
        })?;
        self.shared
            .delete_parts(name, old.into_iter().filter(|p| p.0 != part.0).collect());
        Ok(())
    }

    fn remove(&self, name: &str, object: &str) -> Result<(), Error> {
        let mut old = Vec::new();
        self.shared.commit(name, |h| {
            old = h.objects.remove(object).unwrap_or_default();
        })?;
        self.shared.delete_parts(name, old);
        Ok(())
    }

    fn delete(&self, name: &str) -> Result<(), Error> {
        let lease = self.lock(name)?;
        let s = &self.shared;
        for key in s.keys(name)? {
            let path = s.path(name, &key);
            match s.call(&path, |client, p| async move { client.delete(&p).await }) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(s.io(&path, e)),
            }
        }
        // The head is gone: the lease has nothing left to give up.
        s.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        drop(lease);
        Ok(())
    }

    fn lock(&self, name: &str) -> Result<Box<dyn std::any::Any + Send>, Error> {
        let s = &self.shared;
        let locked = || {
            Error::Durable(DurableError::Locked {
                name: name.to_string(),
            })
        };
        if s.held(name).is_some() {
            return Err(locked());
        }
        let ttl_ms = u64::try_from(s.options.lease_ttl.as_millis()).unwrap_or(u64::MAX);
        let mut head = Head {
            holder: s.holder.clone(),
            epoch: 1,
            renewed_ms: now_ms(),
            ttl_ms,
            released: false,
            objects: BTreeMap::new(),
        };
        let (etag, took_over) = match s.fetch_head(name)? {
            None => (s.put_head(name, &head, None)?.ok_or_else(locked)?, false),
            Some((old, etag)) => {
                if !old.expired(now_ms()) {
                    return Err(locked());
                }
                head.epoch = old.epoch.checked_add(1).ok_or_else(|| {
                    Error::Durable(DurableError::Corrupt {
                        file: s.path(name, HEAD).to_string(),
                        offset: 0,
                        what: "the lease's epoch cannot grow".to_string(),
                    })
                })?;
                head.objects = old.objects;
                (s.put_head(name, &head, etag)?.ok_or_else(locked)?, true)
            }
        };
        let named: std::collections::HashSet<String> = head
            .objects
            .values()
            .flatten()
            .map(|p| p.0.clone())
            .collect();
        let held = Arc::new(Held {
            state: Mutex::new(HeldState {
                head,
                etag,
                lost: None,
            }),
            next_part: std::sync::atomic::AtomicU64::new(0),
        });
        s.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string(), Arc::clone(&held));
        if took_over {
            // Parts a previous owner uploaded but never committed (it crashed, or lost the
            // box) are not part of it: delete them.
            let orphans = s
                .keys(name)?
                .into_iter()
                .filter(|k| k != HEAD && !named.contains(k))
                .map(|k| (k, 0))
                .collect();
            s.delete_parts(name, orphans);
        }
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let renewer = {
            let shared = Arc::clone(&self.shared);
            let stop = Arc::clone(&stop);
            let name = name.to_string();
            let every = s.options.lease_ttl / 3;
            std::thread::Builder::new()
                .name(format!("lease {name}"))
                .spawn(move || renew(&shared, &name, &stop, every))
                .map_err(|source| Error::Io {
                    path: "(lease renewal thread)".into(),
                    source,
                })?
        };
        Ok(Box::new(Lease {
            shared: Arc::clone(&self.shared),
            name: name.to_string(),
            stop,
            renewer: Some(renewer),
        }))
    }

    fn append(&self, name: &str, object: &str, keep: u64) -> Result<Box<dyn Appender>, Error> {
        let s = &self.shared;
        let held = s.owned(name)?;
        let len = held.parts(object).map_or(0, |parts| {
            parts.iter().fold(0u64, |n, p| n.saturating_add(p.1))
        });
        if len > keep {
            // A damaged tail: rewrite the object cut to its good part.
            let mut bytes = self.read(name, object)?;
            bytes.truncate(usize::try_from(keep).unwrap_or(usize::MAX));
            self.write(name, object, &bytes)?;
        }
        S3Appender::start(&self.shared, name, object)
    }
}

impl BoxStore {
    /// A store in an S3-compatible bucket (one writer per box, by leases: see
    /// [`S3Options`]).
    ///
    /// # Errors
    /// [`Error::BadUrl`] for settings the client refuses; [`Error::Io`] if its runtime cannot
    /// start. Nothing is contacted until a box is opened.
    pub fn open_s3(options: super::S3Options) -> Result<BoxStore, Error> {
        Ok(BoxStore::with_backend(S3Backend::new(options)?))
    }
}

/// Renews a lease every `every` until stopped or lost.
fn renew(shared: &Shared, name: &str, stop: &(Mutex<bool>, Condvar), every: Duration) {
    let mut stopped = stop.0.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        let deadline = Instant::now() + every;
        while !*stopped {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            stopped = stop
                .1
                .wait_timeout(stopped, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        if *stopped {
            return;
        }
        drop(stopped);
        let result = shared.commit(name, |_| {});
        if let Err(Error::Durable(DurableError::NotOwner { .. })) = result {
            return;
        }
        stopped = stop.0.lock().unwrap_or_else(PoisonError::into_inner);
    }
}

/// A journal segment in object storage: appends gather in memory; a flush uploads them as
/// the segment's next part and commits it in the head. A flusher thread does that at most
/// `batch_delay` after the first append of a batch, so a record is stored within that delay
/// without the box waiting for it; [`Appender::sync`] does it at once (and waits for a flush
/// in progress). Uploads are serialised, so parts follow each other in the order of their
/// records.
#[derive(Debug)]
struct S3Appender {
    batch: Arc<Batch>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug)]
struct Batch {
    shared: Arc<Shared>,
    name: String,
    object: String,
    state: Mutex<BatchState>,
    /// Wakes the flusher: a first append, or the end.
    wake: Condvar,
    /// Held for a whole upload: uploads happen one at a time, in order.
    upload: Mutex<()>,
}

#[derive(Debug, Default)]
struct BatchState {
    pending: Vec<u8>,
    /// When the oldest pending byte was appended.
    since: Option<Instant>,
    /// Why the flusher's last upload failed (the box must stop; its records stay pending).
    failed: Option<Error>,
    closing: bool,
}

impl S3Appender {
    fn start(shared: &Arc<Shared>, name: &str, object: &str) -> Result<Box<dyn Appender>, Error> {
        let batch = Arc::new(Batch {
            shared: Arc::clone(shared),
            name: name.to_string(),
            object: object.to_string(),
            state: Mutex::default(),
            wake: Condvar::new(),
            upload: Mutex::new(()),
        });
        let b = Arc::clone(&batch);
        let flusher = std::thread::Builder::new()
            .name(format!("journal {name}"))
            .spawn(move || b.flusher())
            .map_err(|source| Error::Io {
                path: "(journal flusher thread)".into(),
                source,
            })?;
        Ok(Box::new(S3Appender {
            batch,
            flusher: Some(flusher),
        }))
    }
}

impl Batch {
    fn state(&self) -> std::sync::MutexGuard<'_, BatchState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Uploads what is pending as the next part and commits it.
    fn upload(&self) -> Result<(), Error> {
        let _turn = self.upload.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes = {
            let mut st = self.state();
            if let Some(e) = st.failed.take() {
                return Err(e);
            }
            st.since = None;
            std::mem::take(&mut st.pending)
        };
        if bytes.is_empty() {
            return Ok(());
        }
        let stored = self
            .shared
            .put_part(&self.name, &self.object, bytes.clone())
            .and_then(|part| {
                self.shared.commit(&self.name, |h| {
                    let parts = h.objects.entry(self.object.clone()).or_default();
                    if !parts.contains(&part) {
                        parts.push(part.clone());
                    }
                })
            });
        if stored.is_err() {
            // Not stored: these records come first in the next try.
            let mut st = self.state();
            let mut again = bytes;
            again.append(&mut st.pending);
            st.pending = again;
            st.since.get_or_insert_with(Instant::now);
        }
        stored
    }

    /// The flusher thread: uploads each batch once its first record waited `batch_delay`.
    fn flusher(&self) {
        let delay = self.shared.options.batch_delay;
        let mut st = self.state();
        loop {
            if st.closing {
                return;
            }
            let due = match st.since {
                None => {
                    st = self.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
                    continue;
                }
                Some(since) => since + delay,
            };
            let now = Instant::now();
            if now < due {
                st = self
                    .wake
                    .wait_timeout(st, due - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
                continue;
            }
            if st.failed.is_some() {
                // The owner has not seen the last failure yet: wait for it.
                st = self.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            drop(st);
            let result = self.upload();
            st = self.state();
            if let Err(e) = result {
                st.failed = Some(e);
            }
        }
    }
}

impl Appender for S3Appender {
    fn append(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let mut st = self.batch.state();
        if let Some(e) = st.failed.take() {
            return Err(e);
        }
        st.pending.extend_from_slice(bytes);
        if st.since.is_none() {
            st.since = Some(Instant::now());
            self.batch.wake.notify_all();
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), Error> {
        let result = self.batch.upload();
        self.batch.wake.notify_all();
        result
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.sync()
    }
}

impl Drop for S3Appender {
    fn drop(&mut self) {
        self.batch.state().closing = true;
        self.batch.wake.notify_all();
        if let Some(t) = self.flusher.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_a_store_url_with_its_settings() {
        let o = S3Options::from_url(
            "s3://boxes/rooms/eu/?endpoint=http://127.0.0.1:8333&region=eu-west-1&lease_ttl_ms=2500&batch_delay_ms=3&holder=h1",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.bucket, "boxes");
        assert_eq!(o.prefix, "rooms/eu");
        assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert_eq!(o.region.as_deref(), Some("eu-west-1"));
        assert_eq!(o.lease_ttl, Duration::from_millis(2500));
        assert_eq!(o.batch_delay, Duration::from_millis(3));
        assert_eq!(o.holder.as_deref(), Some("h1"));
        let o = S3Options::from_url("s3://boxes").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (o.prefix.as_str(), o.lease_ttl),
            ("", Duration::from_secs(10))
        );
    }

    #[test]
    fn reject_bad_store_urls_saying_why() {
        for (url, why) in [
            ("http://boxes", "starts with s3://"),
            ("s3://b1", "3 to 63 characters"),
            ("s3://boxes?lease_ttl_ms=soon", "milliseconds"),
            ("s3://boxes?lease_ttl_ms=5", "at least 30"),
            ("s3://boxes?colour=blue", "unknown setting `colour`"),
            ("s3://boxes?endpoint", "not key=value"),
        ] {
            match S3Options::from_url(url) {
                Err(Error::BadUrl { why: got, .. }) => assert!(got.contains(why), "{url}: {got}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }

    #[test]
    fn accept_a_lease_expires_after_its_ttl_or_when_released() {
        let head = Head {
            renewed_ms: 1_000,
            ttl_ms: 500,
            ..Head::default()
        };
        assert!(!head.expired(1_500));
        assert!(head.expired(1_501));
        let released = Head {
            released: true,
            ..head
        };
        assert!(released.expired(1_000));
    }
}
