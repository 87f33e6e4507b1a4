//! The two kinds of store the durable tests run against: a local directory, and a real
//! S3-compatible server (SeaweedFS, started by `scripts/test`, named by `WASMBOX_S3_URL`).
//! Objects are damaged behind the store's back: files directly, objects in the bucket with
//! raw HTTP requests (curl) that rewrite a part and the box's head.
#![allow(dead_code)] // Shared by test binaries that use different parts.

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use wasmbox_host::durable::BoxStore;

/// Which store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    S3,
}

/// A fresh, empty store of one kind, and raw access to its objects.
#[derive(Debug)]
pub struct TestStore {
    pub store: BoxStore,
    pub url: String,
    place: Place,
}

#[derive(Debug)]
enum Place {
    Dir(tempfile::TempDir),
    /// `endpoint/bucket/prefix`, for raw requests.
    S3(String),
}

/// The server's URL, or a failure that says how to get one.
pub fn s3_url() -> Result<String> {
    std::env::var("WASMBOX_S3_URL").context(
        "the object-storage tests need an S3 server: run `scripts/test` (which starts SeaweedFS), \
         or set WASMBOX_S3_URL=s3://bucket?endpoint=http://host:port",
    )
}

/// A prefix no other test uses.
pub fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "t{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `(endpoint, bucket)` of an `s3://bucket?endpoint=…` URL.
pub fn split_url(url: &str) -> Result<(String, String)> {
    let rest = url.strip_prefix("s3://").context("not an s3:// URL")?;
    let (path, query) = rest.split_once('?').context("no ?endpoint=")?;
    let bucket = path.split('/').next().unwrap_or_default().to_string();
    let endpoint = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("endpoint="))
        .context("no endpoint")?
        .to_string();
    Ok((endpoint, bucket))
}

impl TestStore {
    pub fn new(kind: Kind) -> Result<TestStore> {
        match kind {
            Kind::Dir => {
                let dir = tempfile::tempdir()?;
                let url = dir.path().to_string_lossy().into_owned();
                Ok(TestStore {
                    store: BoxStore::open_url(&url)?,
                    url,
                    place: Place::Dir(dir),
                })
            }
            Kind::S3 => {
                let base = s3_url()?;
                let (endpoint, bucket) = split_url(&base)?;
                let prefix = unique_prefix();
                let url = format!("s3://{bucket}/{prefix}?endpoint={endpoint}");
                Ok(TestStore {
                    store: BoxStore::open_url(&url)?,
                    url,
                    place: Place::S3(format!("{endpoint}/{bucket}/{prefix}")),
                })
            }
        }
    }

    /// A box's objects (its lock file or head aside) and their bytes, sorted by name.
    pub fn objects(&self, name: &str) -> Vec<(String, Vec<u8>)> {
        match &self.place {
            Place::Dir(d) => {
                let mut f: Vec<_> = std::fs::read_dir(d.path().join(name))
                    .unwrap()
                    .map(|e| e.unwrap())
                    .filter(|e| e.file_name() != "lock")
                    .map(|e| {
                        let name = e.file_name().into_string().unwrap();
                        (name, std::fs::read(e.path()).unwrap())
                    })
                    .collect();
                f.sort();
                f
            }
            Place::S3(base) => {
                let head = head(base, name).unwrap();
                head.objects
                    .iter()
                    .map(|(object, parts)| {
                        let mut bytes = Vec::new();
                        for (key, _) in parts {
                            bytes.extend(get(&format!("{base}/{name}/{key}")).unwrap());
                        }
                        (object.clone(), bytes)
                    })
                    .collect()
            }
        }
    }

    pub fn names(&self, name: &str) -> Vec<String> {
        self.objects(name).into_iter().map(|(n, _)| n).collect()
    }

    pub fn read(&self, name: &str, object: &str) -> Vec<u8> {
        self.objects(name)
            .into_iter()
            .find(|(n, _)| n == object)
            .unwrap_or_else(|| panic!("no object {object}"))
            .1
    }

    /// Replaces an object's bytes behind the store's back.
    pub fn write(&self, name: &str, object: &str, bytes: &[u8]) {
        match &self.place {
            Place::Dir(d) => std::fs::write(d.path().join(name).join(object), bytes).unwrap(),
            Place::S3(base) => {
                let key = format!("{object}.damaged-{}", unique_prefix());
                put(&format!("{base}/{name}/{key}"), bytes).unwrap();
                let mut h = head(base, name).unwrap();
                h.objects
                    .insert(object.to_string(), vec![(key, bytes.len() as u64)]);
                put_head(base, name, &h).unwrap();
            }
        }
    }

    /// Removes an object behind the store's back.
    pub fn remove(&self, name: &str, object: &str) {
        match &self.place {
            Place::Dir(d) => std::fs::remove_file(d.path().join(name).join(object)).unwrap(),
            Place::S3(base) => {
                let mut h = head(base, name).unwrap();
                assert!(h.objects.remove(object).is_some(), "no object {object}");
                put_head(base, name, &h).unwrap();
            }
        }
    }

    /// Changes a box's head in the bucket behind the store's back (object stores only).
    pub fn edit_head(&self, name: &str, f: impl FnOnce(&mut Head)) {
        let Place::S3(base) = &self.place else {
            panic!("a directory store has no head")
        };
        let mut h = head(base, name).unwrap();
        f(&mut h);
        put_head(base, name, &h).unwrap();
    }

    /// The newest journal segment's name.
    pub fn current_segment(&self, name: &str) -> String {
        self.names(name)
            .into_iter()
            .rfind(|n| n.ends_with(".wbj"))
            .unwrap()
    }
}

/// A box's head in the bucket, as the store writes it (the fields the tests touch; the rest
/// is kept as it is).
#[derive(serde::Deserialize, serde::Serialize, Debug)]
pub struct Head {
    pub objects: BTreeMap<String, Vec<(String, u64)>>,
    #[serde(flatten)]
    pub rest: BTreeMap<String, serde_json::Value>,
}

pub fn head(base: &str, name: &str) -> Result<Head> {
    Ok(serde_json::from_slice(&get(&format!(
        "{base}/{name}/head"
    ))?)?)
}

fn put_head(base: &str, name: &str, h: &Head) -> Result<()> {
    put(&format!("{base}/{name}/head"), &serde_json::to_vec(h)?)
}

/// GET with curl (anonymous requests: the test server allows them).
pub fn get(url: &str) -> Result<Vec<u8>> {
    let out = Command::new("curl").args(["-sf", url]).output()?;
    if !out.status.success() {
        bail!("GET {url}: curl {}", out.status);
    }
    Ok(out.stdout)
}

pub fn put(url: &str, bytes: &[u8]) -> Result<()> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), bytes)?;
    let out = Command::new("curl")
        .args(["-sf", "-X", "PUT", "--data-binary"])
        .arg(format!("@{}", file.path().display()))
        .arg(url)
        .output()?;
    if !out.status.success() {
        bail!("PUT {url}: curl {}", out.status);
    }
    Ok(())
}
