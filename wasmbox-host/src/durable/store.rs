//! Where durable boxes live: [`BoxStore`], a handle over a [`Backend`]. The embedded default
//! is a local directory ([`BoxStore::open_dir`]); another backend (object storage) implements
//! the same trait without touching [`DurableBox`](super::DurableBox).
//!
//! A box is a set of named objects: checkpoints (`checkpoint-<seq>.snap` / `.delta`), journal
//! segments (`journal-<seq>.wbj`, appended to) and, in a directory, a lock file.

use crate::error::{DurableError, Error};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
}

/// A store of durable boxes: a cheap, cloneable handle over a [`Backend`].
#[derive(Clone, Debug)]
pub struct BoxStore {
    pub(crate) backend: Arc<dyn Backend>,
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
        Ok(BoxStore::with_backend(DirBackend { root }))
    }

    /// A store over any backend.
    pub fn with_backend(backend: impl Backend + 'static) -> BoxStore {
        BoxStore {
            backend: Arc::new(backend),
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
        match file.try_lock() {
            Ok(()) => Ok(Box::new(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(Error::Durable(DurableError::Locked {
                name: name.to_string(),
            })),
            Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e)),
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
