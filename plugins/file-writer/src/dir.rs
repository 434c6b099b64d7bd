//! The directory and its files, the only place the writer does I/O.
//!
//! Two implementations of one small API, [`Dir`] and [`File`]:
//!
//! - natively (`cargo test`), `std::fs`;
//! - in wasm, wasi:filesystem descriptors called directly (the `wasip2` bindings),
//!   not through std: std's file I/O goes through the WASI preview1 adapter, which
//!   hands a write to the host in 4 KiB `blocking-write-and-flush` calls. Here a
//!   batch's append is one `descriptor.write(buffer, offset)` (a positional write
//!   of any length) and one `sync-data`, whatever the batch's size.
//!
//! Files are written at explicit offsets: the writer knows where its file ends
//! (it is the only one appending to it, and cuts a failed append off again).

use std::io;
use std::time::SystemTime;

#[cfg(not(target_arch = "wasm32"))]
pub use native::{Dir, File};
#[cfg(target_arch = "wasm32")]
pub use wasi::{Dir, File};

/// What the writer needs to know of a file.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    /// Its size in bytes.
    pub len: u64,
    /// When its data last changed.
    pub mtime: SystemTime,
}

/// Turns a "no such file" into `None`: files come and go under other instances.
fn found<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::fs::{self, OpenOptions};
    use std::io::{self, Read, Seek, SeekFrom, Write};
    use std::path::PathBuf;
    use std::time::SystemTime;

    use super::{Meta, found};

    /// The directory the files go to.
    pub struct Dir(PathBuf);

    /// An open file of the directory.
    pub struct File(fs::File);

    impl Dir {
        /// Opens the directory `path`.
        pub fn open(path: &str) -> io::Result<Dir> {
            let meta = fs::metadata(path)?;
            if !meta.is_dir() {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    "not a directory",
                ));
            }
            Ok(Dir(PathBuf::from(path)))
        }

        /// When an entry was last created, renamed or removed.
        pub fn mtime(&self) -> io::Result<SystemTime> {
            fs::metadata(&self.0)?.modified()
        }

        /// The names of its entries.
        pub fn names(&self) -> io::Result<Vec<String>> {
            let mut names = Vec::new();
            for entry in fs::read_dir(&self.0)? {
                names.push(entry?.file_name().to_string_lossy().into_owned());
            }
            Ok(names)
        }

        /// The size and modification time of `name`; `None` if it is gone.
        pub fn stat(&self, name: &str) -> io::Result<Option<Meta>> {
            found(fs::metadata(self.0.join(name)).and_then(|m| {
                Ok(Meta {
                    len: m.len(),
                    mtime: m.modified()?,
                })
            }))
        }

        /// Creates `name`, which must not exist yet, to write to.
        pub fn create_new(&self, name: &str) -> io::Result<File> {
            OpenOptions::new()
                .create_new(true)
                .read(true)
                .write(true)
                .open(self.0.join(name))
                .map(File)
        }

        /// Opens `name` to read (and, with `write`, to write); `None` if it is gone.
        pub fn open_file(&self, name: &str, write: bool) -> io::Result<Option<File>> {
            found(
                OpenOptions::new()
                    .read(true)
                    .write(write)
                    .open(self.0.join(name))
                    .map(File),
            )
        }

        /// Renames `from` to `to`; `false` if `from` is gone.
        pub fn rename(&self, from: &str, to: &str) -> io::Result<bool> {
            found(fs::rename(self.0.join(from), self.0.join(to))).map(|r| r.is_some())
        }

        /// Deletes `name` (fine if it is gone already).
        pub fn remove(&self, name: &str) -> io::Result<()> {
            found(fs::remove_file(self.0.join(name))).map(drop)
        }

        /// Makes renames and new files durable (best effort: not every platform
        /// can open a directory).
        pub fn sync(&self) {
            if let Ok(d) = fs::File::open(&self.0) {
                let _ = d.sync_all();
            }
        }
    }

    impl File {
        /// Writes all of `data` at `offset`.
        pub fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
            let mut f = &self.0;
            f.seek(SeekFrom::Start(offset))?;
            f.write_all(data)
        }

        /// Up to `len` bytes from `offset` (fewer at the end of the file).
        pub fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
            let mut f = &self.0;
            f.seek(SeekFrom::Start(offset))?;
            let mut data = Vec::new();
            f.take(len).read_to_end(&mut data)?;
            Ok(data)
        }

        /// Cuts (or extends) the file to `len` bytes.
        pub fn set_len(&self, len: u64) -> io::Result<()> {
            self.0.set_len(len)
        }

        /// Makes the data written durable.
        pub fn sync_data(&self) -> io::Result<()> {
            self.0.sync_data()
        }

        /// Makes the data and the metadata durable.
        pub fn sync_all(&self) -> io::Result<()> {
            self.0.sync_all()
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod wasi {
    use std::io;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use wasip2::clocks::wall_clock::Datetime;
    use wasip2::filesystem::preopens::get_directories;
    use wasip2::filesystem::types::{
        Descriptor, DescriptorFlags, DescriptorType, ErrorCode, OpenFlags, PathFlags,
    };

    use super::{Meta, found};

    /// The directory the files go to: a descriptor of a preopened directory (or
    /// of a directory below one).
    pub struct Dir(Descriptor);

    /// An open file of the directory.
    pub struct File(Descriptor);

    /// The host's largest read (wasmtime allocates at most 64 KiB a `read`).
    const READ_CHUNK: u64 = 64 << 10;

    fn error(e: ErrorCode) -> io::Error {
        use io::ErrorKind as K;
        let kind = match e {
            ErrorCode::NoEntry => K::NotFound,
            ErrorCode::Access | ErrorCode::NotPermitted => K::PermissionDenied,
            ErrorCode::ReadOnly => K::ReadOnlyFilesystem,
            ErrorCode::Exist => K::AlreadyExists,
            ErrorCode::Interrupted => K::Interrupted,
            ErrorCode::WouldBlock => K::WouldBlock,
            ErrorCode::InsufficientSpace | ErrorCode::Quota => K::StorageFull,
            ErrorCode::InsufficientMemory => K::OutOfMemory,
            ErrorCode::NotDirectory => K::NotADirectory,
            ErrorCode::IsDirectory => K::IsADirectory,
            ErrorCode::Invalid => K::InvalidInput,
            ErrorCode::Unsupported => K::Unsupported,
            _ => K::Other,
        };
        io::Error::new(kind, format!("{} ({})", e.message(), e.name()))
    }

    fn modified(t: Option<Datetime>) -> io::Result<SystemTime> {
        let Some(t) = t else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the host gives no modification time",
            ));
        };
        Ok(UNIX_EPOCH + Duration::new(t.seconds, t.nanoseconds))
    }

    impl Dir {
        /// Opens the directory `path`: a preopened directory (`/data`, the
        /// granted one) or a directory below one.
        pub fn open(path: &str) -> io::Result<Dir> {
            let path = path.trim_end_matches('/');
            // The preopen `path` is, or is below (the longest such name).
            let mut best: Option<(Descriptor, String)> = None;
            for (descriptor, name) in get_directories() {
                let name = name.trim_end_matches('/').to_owned();
                let inside = path
                    .strip_prefix(name.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
                if inside && best.as_ref().is_none_or(|(_, b)| name.len() > b.len()) {
                    best = Some((descriptor, name));
                }
            }
            let Some((preopen, name)) = best else {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no granted directory holds it",
                ));
            };
            let rest = path[name.len()..].trim_start_matches('/');
            let dir = if rest.is_empty() {
                preopen
            } else {
                preopen
                    .open_at(
                        PathFlags::SYMLINK_FOLLOW,
                        rest,
                        OpenFlags::DIRECTORY,
                        DescriptorFlags::READ | DescriptorFlags::MUTATE_DIRECTORY,
                    )
                    .map_err(error)?
            };
            match dir.get_type().map_err(error)? {
                DescriptorType::Directory => Ok(Dir(dir)),
                _ => Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    "not a directory",
                )),
            }
        }

        /// When an entry was last created, renamed or removed.
        pub fn mtime(&self) -> io::Result<SystemTime> {
            let stat = self.0.stat().map_err(error)?;
            modified(stat.data_modification_timestamp)
        }

        /// The names of its entries.
        pub fn names(&self) -> io::Result<Vec<String>> {
            let stream = self.0.read_directory().map_err(error)?;
            let mut names = Vec::new();
            while let Some(entry) = stream.read_directory_entry().map_err(error)? {
                names.push(entry.name);
            }
            Ok(names)
        }

        /// The size and modification time of `name`; `None` if it is gone.
        pub fn stat(&self, name: &str) -> io::Result<Option<Meta>> {
            let stat = match self.0.stat_at(PathFlags::empty(), name) {
                Ok(s) => s,
                Err(ErrorCode::NoEntry) => return Ok(None),
                Err(e) => return Err(error(e)),
            };
            Ok(Some(Meta {
                len: stat.size,
                mtime: modified(stat.data_modification_timestamp)?,
            }))
        }

        /// Creates `name`, which must not exist yet, to write to.
        pub fn create_new(&self, name: &str) -> io::Result<File> {
            self.0
                .open_at(
                    PathFlags::empty(),
                    name,
                    OpenFlags::CREATE | OpenFlags::EXCLUSIVE,
                    DescriptorFlags::READ | DescriptorFlags::WRITE,
                )
                .map(File)
                .map_err(error)
        }

        /// Opens `name` to read (and, with `write`, to write); `None` if it is gone.
        pub fn open_file(&self, name: &str, write: bool) -> io::Result<Option<File>> {
            let flags = if write {
                DescriptorFlags::READ | DescriptorFlags::WRITE
            } else {
                DescriptorFlags::READ
            };
            found(
                self.0
                    .open_at(PathFlags::empty(), name, OpenFlags::empty(), flags)
                    .map(File)
                    .map_err(error),
            )
        }

        /// Renames `from` to `to`; `false` if `from` is gone.
        pub fn rename(&self, from: &str, to: &str) -> io::Result<bool> {
            found(self.0.rename_at(from, &self.0, to).map_err(error)).map(|r| r.is_some())
        }

        /// Deletes `name` (fine if it is gone already).
        pub fn remove(&self, name: &str) -> io::Result<()> {
            found(self.0.unlink_file_at(name).map_err(error)).map(drop)
        }

        /// Makes renames and new files durable (best effort).
        pub fn sync(&self) {
            let _ = self.0.sync();
        }
    }

    impl File {
        /// Writes all of `data` at `offset`: one host call, more only if the host
        /// writes less than asked.
        pub fn write_all_at(&self, mut data: &[u8], mut offset: u64) -> io::Result<()> {
            while !data.is_empty() {
                let n = self.0.write(data, offset).map_err(error)?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                let n = (n as usize).min(data.len());
                data = &data[n..];
                offset += n as u64;
            }
            Ok(())
        }

        /// Up to `len` bytes from `offset` (fewer at the end of the file).
        pub fn read_at(&self, mut offset: u64, len: u64) -> io::Result<Vec<u8>> {
            let mut data = Vec::new();
            let mut left = len;
            while left > 0 {
                let (chunk, end) = self.0.read(left.min(READ_CHUNK), offset).map_err(error)?;
                offset += chunk.len() as u64;
                left -= (chunk.len() as u64).min(left);
                data.extend_from_slice(&chunk);
                if end || chunk.is_empty() {
                    break;
                }
            }
            Ok(data)
        }

        /// Cuts (or extends) the file to `len` bytes.
        pub fn set_len(&self, len: u64) -> io::Result<()> {
            self.0.set_size(len).map_err(error)
        }

        /// Makes the data written durable.
        pub fn sync_data(&self) -> io::Result<()> {
            self.0.sync_data().map_err(error)
        }

        /// Makes the data and the metadata durable.
        pub fn sync_all(&self) -> io::Result<()> {
            self.0.sync().map_err(error)
        }
    }
}
