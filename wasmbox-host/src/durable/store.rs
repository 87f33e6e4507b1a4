//! Where durable boxes live: [`BoxStore`], a handle over a [`Backend`]. The embedded default
//! is a local directory ([`BoxStore::open_dir`]); another backend (object storage) implements
//! the same trait without touching [`DurableBox`](super::DurableBox).
//!
//! A box is a set of named objects: checkpoints (`checkpoint-<seq>.snap` / `.delta`), journal
//! segments (`journal-<seq>.wbj`, appended to) and, in a directory, a lock file.

use crate::error::{DurableError, Error};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// Storage for durable boxes. Implementations must make [`Backend::write`] atomic and durable
/// (the object holds either its old content or the new, after a crash), and make
/// [`Backend::lock`] exclusive across processes.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// The names of the boxes in the store.
    ///
    /// # Errors
    /// I/O errors.
    fn boxes(&self) -> Result<Vec<String>, Error>;
    /// The names of a box's objects (empty for a box that does not exist).
    ///
    /// # Errors
    /// I/O errors.
    fn objects(&self, name: &str) -> Result<Vec<String>, Error>;
    /// An object's bytes.
    ///
    /// # Errors
    /// I/O errors, a missing object.
    fn read(&self, name: &str, object: &str) -> Result<Vec<u8>, Error>;
    /// Writes an object whole, atomically and durably.
    ///
    /// # Errors
    /// I/O errors.
    fn write(&self, name: &str, object: &str, bytes: &[u8]) -> Result<(), Error>;
    /// Removes an object (a missing one is not an error).
    ///
    /// # Errors
    /// I/O errors.
    fn remove(&self, name: &str, object: &str) -> Result<(), Error>;
    /// Deletes a box and everything in it.
    ///
    /// # Errors
    /// [`DurableError::Locked`] if it is open, I/O errors.
    fn delete(&self, name: &str) -> Result<(), Error>;
    /// Makes the caller the box's only writer until the returned guard is dropped.
    ///
    /// # Errors
    /// [`DurableError::Locked`] if another owner holds it.
    fn lock(&self, name: &str) -> Result<Box<dyn std::any::Any + Send>, Error>;
    /// Opens an object for appending, first cutting it to `keep` bytes (a torn tail).
    ///
    /// # Errors
    /// I/O errors.
    fn append(&self, name: &str, object: &str, keep: u64) -> Result<Box<dyn Appender>, Error>;
    /// Whether [`Backend::sync_all`] works: then boxes of the store that need their journals
    /// on disk at the same time share one call (group commit).
    fn can_sync_all(&self) -> bool {
        false
    }
    /// Makes every append to any of the store's objects so far durable, at once.
    ///
    /// # Errors
    /// I/O errors.
    fn sync_all(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// An object being appended to: a journal segment.
pub trait Appender: Send + std::fmt::Debug {
    /// Appends `bytes`; when this returns they have reached the operating system (a killed
    /// process loses nothing).
    ///
    /// # Errors
    /// I/O errors.
    fn append(&mut self, bytes: &[u8]) -> Result<(), Error>;
    /// Makes everything appended so far durable (fsync).
    ///
    /// # Errors
    /// I/O errors.
    fn sync(&mut self) -> Result<(), Error>;
    /// Makes everything appended so far visible to a reader of the object (an object store
    /// uploads it; a file already is).
    ///
    /// # Errors
    /// I/O errors.
    fn flush(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

/// A store of durable boxes: a cheap, cloneable handle over a [`Backend`].
#[derive(Clone, Debug)]
pub struct BoxStore {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) group: Arc<GroupCommit>,
}

impl BoxStore {
    /// A store in a local directory (created if missing): each box is a subdirectory.
    ///
    /// # Errors
    /// [`Error::Io`] if the directory cannot be created.
    pub fn open_dir(path: impl AsRef<Path>) -> Result<BoxStore, Error> {
        let root = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&root).map_err(|source| Error::Io {
            path: root.clone(),
            source,
        })?;
        let dir = File::open(&root).map_err(io(&root))?;
        Ok(BoxStore::with_backend(DirBackend { root, dir }))
    }

    /// A store over any backend.
    pub fn with_backend(backend: impl Backend + 'static) -> BoxStore {
        BoxStore {
            backend: Arc::new(backend),
            group: Arc::default(),
        }
    }

    /// The names of the boxes in the store, sorted.
    ///
    /// # Errors
    /// I/O errors.
    pub fn list(&self) -> Result<Vec<String>, Error> {
        let mut names = self.backend.boxes()?;
        names.sort();
        Ok(names)
    }

    /// Makes every journal record appended to the store's boxes so far durable, in one flush
    /// shared by all of them (group commit): then [`DurableBox::deliver`] hands out the outputs
    /// that [`DurableBox::submit`] held back. A backend without a store-wide flush does
    /// nothing here, and `deliver` then syncs each box's own journal.
    ///
    /// # Errors
    /// I/O errors.
    ///
    /// [`DurableBox::deliver`]: super::DurableBox::deliver
    /// [`DurableBox::submit`]: super::DurableBox::submit
    pub fn commit(&self) -> Result<(), Error> {
        self.group.commit(&*self.backend, None)
    }

    /// Deletes a box that is not open.
    ///
    /// # Errors
    /// [`DurableError::Locked`] if it is open somewhere; I/O errors.
    pub fn delete(&self, name: &str) -> Result<(), Error> {
        check_name(name)?;
        self.backend.delete(name)
    }
}

/// Box names are used as directory and object-key components: 1–128 characters of
/// `[A-Za-z0-9._-]`, not starting with a dot.
pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    let ok = (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Durable(DurableError::BadName {
            name: name.to_string(),
        }))
    }
}

/// The local-directory backend.
#[derive(Debug)]
struct DirBackend {
    root: PathBuf,
    /// The root, open: `syncfs` on it flushes the file system that holds the store.
    dir: File,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

const LOCK: &str = "lock";

impl DirBackend {
    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

impl Backend for DirBackend {
    fn can_sync_all(&self) -> bool {
        cfg!(target_os = "linux")
    }

    fn sync_all(&self) -> Result<(), Error> {
        #[cfg(target_os = "linux")]
        crate::sys::syncfs(&self.dir).map_err(io(&self.root))?;
        Ok(())
    }

    fn boxes(&self) -> Result<Vec<String>, Error> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let entry = entry.map_err(io(&self.root))?;
            if entry.path().is_dir()
                && let Some(name) = entry.file_name().to_str()
                && check_name(name).is_ok()
            {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    fn objects(&self, name: &str) -> Result<Vec<String>, Error> {
        let dir = self.dir(name);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut objects = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            if let Some(object) = entry.file_name().to_str()
                && object != LOCK
                && !object.starts_with('.')
            {
                objects.push(object.to_string());
            }
        }
        Ok(objects)
    }

    fn read(&self, name: &str, object: &str) -> Result<Vec<u8>, Error> {
        crate::file::read_file(&self.dir(name).join(object))
    }

    fn write(&self, name: &str, object: &str, bytes: &[u8]) -> Result<(), Error> {
        crate::file::write_atomically(&self.dir(name).join(object), |f| f.write_all(bytes))
    }

    fn remove(&self, name: &str, object: &str) -> Result<(), Error> {
        let path = self.dir(name).join(object);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        }
    }

    fn delete(&self, name: &str) -> Result<(), Error> {
        let guard = self.lock(name)?;
        let dir = self.dir(name);
        let removed = std::fs::remove_dir_all(&dir).map_err(io(&dir));
        drop(guard);
        removed
    }

    fn lock(&self, name: &str) -> Result<Box<dyn std::any::Any + Send>, Error> {
        let dir = self.dir(name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        // A lock just given up can linger for a moment: a child process forked by another
        // thread holds a copy of the descriptor until it execs. So a busy lock is tried again
        // for a short while before the box counts as open elsewhere.
        let until = std::time::Instant::now() + std::time::Duration::from_millis(250);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Box::new(file)),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::Durable(DurableError::Locked {
                        name: name.to_string(),
                    }));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
            }
        }
    }

    fn append(&self, name: &str, object: &str, keep: u64) -> Result<Box<dyn Appender>, Error> {
        let path = self.dir(name).join(object);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        let len = file.metadata().map_err(io(&path))?.len();
        if len > keep {
            file.set_len(keep).map_err(io(&path))?;
            file.sync_data().map_err(io(&path))?;
        }
        let mut file = file;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0)).map_err(io(&path))?;
        if len == 0 {
            // A new segment: make its directory entry durable.
            if let Ok(d) = File::open(self.dir(name)) {
                let _ = d.sync_all();
            }
        }
        Ok(Box::new(FileAppender { file, path }))
    }
}

#[derive(Debug)]
struct FileAppender {
    file: File,
    path: PathBuf,
}

impl Appender for FileAppender {
    fn append(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.file.write_all(bytes).map_err(io(&self.path))
    }

    fn sync(&mut self) -> Result<(), Error> {
        self.file.sync_data().map_err(io(&self.path))
    }
}

/// Group commit: the boxes of one store that need their journals on disk at the same time
/// share one flush. The first to ask becomes the leader; when other `Sync` boxes are open it
/// waits a moment (half the last flush's time, at most 1 ms) for them to ask too, then flushes
/// — its own segment if it is alone, the whole store with [`Backend::sync_all`] if others
/// wait — while those who ask during that flush wait for the next, which covers them all.
#[derive(Debug, Default)]
pub(crate) struct GroupCommit {
    state: Mutex<CommitState>,
    done: Condvar,
    arrived: Condvar,
}

#[derive(Debug, Default)]
struct CommitState {
    /// Flushes started and finished, numbered from 1.
    started: u64,
    finished: u64,
    flushing: bool,
    /// Callers waiting for a flush.
    waiting: usize,
    /// Recent flushes that failed, with the error.
    failed: HashMap<u64, String>,
    /// `Sync` boxes open on the store.
    writers: usize,
    /// How long the last flush took.
    last_flush: std::time::Duration,
}

impl GroupCommit {
    fn lock(&self) -> MutexGuard<'_, CommitState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The number of the first flush that will cover what was appended until now.
    pub(crate) fn ticket(&self) -> u64 {
        self.lock().started + 1
    }

    /// Whether the flush numbered `ticket` has finished, and how.
    pub(crate) fn covered(&self, ticket: u64) -> Option<Result<(), String>> {
        let st = self.lock();
        (st.finished >= ticket).then(|| match st.failed.get(&ticket) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        })
    }

    /// A `Sync` box opened on the store.
    pub(crate) fn join(&self) {
        self.lock().writers += 1;
    }

    /// A `Sync` box closed.
    pub(crate) fn leave(&self) {
        let mut st = self.lock();
        st.writers = st.writers.saturating_sub(1);
        drop(st);
        self.arrived.notify_all();
    }

    /// Returns once everything `own` received before this call is durable.
    ///
    /// # Errors
    /// The error of the flush that covered this call.
    pub(crate) fn commit(
        &self,
        backend: &dyn Backend,
        mut own: Option<&mut dyn Appender>,
    ) -> Result<(), Error> {
        if !backend.can_sync_all() {
            return own.map_or(Ok(()), |own| own.sync());
        }
        let mut st = self.lock();
        // The first flush that starts from now on covers what was appended before.
        let need = st.started + 1;
        st.waiting += 1;
        self.arrived.notify_all();
        loop {
            if st.finished >= need {
                st.waiting -= 1;
                return match st.failed.get(&need) {
                    Some(e) => Err(Error::Io {
                        path: PathBuf::from("(group commit)"),
                        source: std::io::Error::other(e.clone()),
                    }),
                    None => Ok(()),
                };
            }
            if st.flushing {
                st = self.done.wait(st).unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            st.flushing = true;
            // Gather: the boxes that ask while the leader waits are covered by its flush.
            if st.writers > 1 {
                let wait = (st.last_flush / 2).clamp(
                    std::time::Duration::from_micros(20),
                    std::time::Duration::from_millis(1),
                );
                let until = std::time::Instant::now() + wait;
                while st.waiting < st.writers {
                    let now = std::time::Instant::now();
                    if now >= until {
                        break;
                    }
                    st = self
                        .arrived
                        .wait_timeout(st, until - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
            st.started += 1;
            let flush = st.started;
            let alone = st.waiting == 1;
            drop(st);
            let started = std::time::Instant::now();
            let result = match own.as_deref_mut() {
                Some(own) if alone => own.sync(),
                _ => backend.sync_all(),
            };
            st = self.lock();
            st.last_flush = started.elapsed();
            st.flushing = false;
            st.finished = flush;
            if let Err(e) = result {
                st.failed.insert(flush, e.to_string());
            }
            st.failed.retain(|&n, _| n + 1024 > flush);
            self.done.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A backend whose flushes take a while and count themselves.
    #[derive(Debug, Default)]
    struct Slow {
        all: AtomicU64,
        own: Arc<AtomicU64>,
        /// The number of appends made durable: set to `appended` at each flush's start.
        durable: Arc<AtomicU64>,
        appended: Arc<AtomicU64>,
    }

    #[derive(Debug)]
    struct SlowAppender {
        own: Arc<AtomicU64>,
        durable: Arc<AtomicU64>,
        appended: Arc<AtomicU64>,
    }

    fn flush(durable: &AtomicU64, appended: &AtomicU64) {
        let upto = appended.load(Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(2));
        durable.fetch_max(upto, Ordering::SeqCst);
    }

    impl Appender for SlowAppender {
        fn append(&mut self, _: &[u8]) -> Result<(), Error> {
            self.appended.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn sync(&mut self) -> Result<(), Error> {
            self.own.fetch_add(1, Ordering::SeqCst);
            // Only this appender's data, but the test has each thread check its own append.
            flush(&self.durable, &self.appended);
            Ok(())
        }
    }

    impl Backend for Slow {
        fn boxes(&self) -> Result<Vec<String>, Error> {
            Ok(Vec::new())
        }
        fn objects(&self, _: &str) -> Result<Vec<String>, Error> {
            Ok(Vec::new())
        }
        fn read(&self, _: &str, _: &str) -> Result<Vec<u8>, Error> {
            Ok(Vec::new())
        }
        fn write(&self, _: &str, _: &str, _: &[u8]) -> Result<(), Error> {
            Ok(())
        }
        fn remove(&self, _: &str, _: &str) -> Result<(), Error> {
            Ok(())
        }
        fn delete(&self, _: &str) -> Result<(), Error> {
            Ok(())
        }
        fn lock(&self, _: &str) -> Result<Box<dyn std::any::Any + Send>, Error> {
            Ok(Box::new(()))
        }
        fn append(&self, _: &str, _: &str, _: u64) -> Result<Box<dyn Appender>, Error> {
            Ok(Box::new(SlowAppender {
                own: Arc::clone(&self.own),
                durable: Arc::clone(&self.durable),
                appended: Arc::clone(&self.appended),
            }))
        }
        fn can_sync_all(&self) -> bool {
            true
        }
        fn sync_all(&self) -> Result<(), Error> {
            self.all.fetch_add(1, Ordering::SeqCst);
            flush(&self.durable, &self.appended);
            Ok(())
        }
    }

    #[test]
    fn accept_group_commit_shares_flushes_and_never_returns_early() {
        let backend = Arc::new(Slow::default());
        let group = Arc::new(GroupCommit::default());
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let backend = Arc::clone(&backend);
                let group = Arc::clone(&group);
                std::thread::spawn(move || {
                    group.join();
                    let mut journal = backend.append("b", "j", 0).unwrap();
                    for _ in 0..20 {
                        journal.append(b"x").unwrap();
                        // Our append is number `mine` or lower.
                        let mine = backend.appended.load(Ordering::SeqCst);
                        group.commit(&*backend, Some(&mut *journal)).unwrap();
                        assert!(backend.durable.load(Ordering::SeqCst) >= mine);
                    }
                    group.leave();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let flushes = backend.all.load(Ordering::SeqCst) + backend.own.load(Ordering::SeqCst);
        assert!(flushes < 16 * 20 / 4, "{flushes} flushes for 320 commits");
        assert!(backend.all.load(Ordering::SeqCst) > 0);
    }
}
