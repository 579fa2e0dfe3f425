//! One writer per dataset: `<dataset>/.lock`, held with an OS file lock (`flock`) for as long as a run writes.
//!
//! The OS drops the lock when its holder dies, however it dies, so a crashed run never blocks the next one. The file
//! also says who holds it (pid, host, start time, command) for the message another run prints, and is emptied on a
//! clean release: a run that finds it non-empty but unlocked knows the previous holder died, and says so.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::manifest::unix_now;

pub const LOCK_FILE: &str = ".lock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub pid: u32,
    pub host: String,
    pub started_unix: u64,
    pub command: String,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} on {} ({}), since unix time {}", self.pid, self.host, self.command, self.started_unix)
    }
}

/// A held dataset lock; released on drop.
#[derive(Debug)]
pub struct DatasetLock {
    file: File,
    path: PathBuf,
    /// Set when the lock was taken over from a process that died holding it.
    pub stale: Option<LockHolder>,
}

impl DatasetLock {
    /// Takes the lock of `dataset` (created if missing), waiting up to `wait` for another run to finish.
    pub fn acquire(dataset: &Path, command: &str, wait: Duration) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dataset).map_err(StoreError::io(dataset))?;
        let path = dataset.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(StoreError::io(&path))?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(StoreError::Locked { path: dataset.to_path_buf(), holder: read_holder(&mut file) });
                }
                Err(TryLockError::Error(e)) => return Err(StoreError::Io { path, source: e }),
            }
        }
        let stale = read_holder(&mut file);
        let holder = LockHolder {
            pid: std::process::id(),
            host: hostname(),
            started_unix: unix_now(),
            command: command.to_owned(),
        };
        let bytes = serde_json::to_vec(&holder).unwrap_or_default();
        file.set_len(0).map_err(StoreError::io(&path))?;
        file.rewind().map_err(StoreError::io(&path))?;
        file.write_all(&bytes).map_err(StoreError::io(&path))?;
        Ok(Self { file, path, stale })
    }
}

impl Drop for DatasetLock {
    fn drop(&mut self) {
        // Emptied first, so a reader never sees a holder that is gone; the OS lock goes with the file handle.
        if let Err(e) = self.file.set_len(0) {
            tracing::warn!("{}: could not clear the lock file: {e}", self.path.display());
        }
        let _ = self.file.unlock();
    }
}

fn read_holder(file: &mut File) -> Option<LockHolder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown host".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_named_and_a_dead_holder_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = DatasetLock::acquire(dir.path(), "embed", Duration::ZERO).expect("first");
        assert_eq!(first.stale, None);
        match DatasetLock::acquire(dir.path(), "run", Duration::from_millis(300)) {
            Err(StoreError::Locked { holder: Some(h), .. }) => {
                assert_eq!((h.pid, h.command.as_str()), (std::process::id(), "embed"));
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        let second = DatasetLock::acquire(dir.path(), "run", Duration::ZERO).expect("after release");
        assert_eq!(second.stale, None, "a clean release leaves no holder behind");

        // A holder that died: its record is still in the file, but nobody holds the OS lock.
        drop(second);
        let dead = LockHolder { pid: 999_999, host: "h".into(), started_unix: 1, command: "embed".into() };
        std::fs::write(dir.path().join(LOCK_FILE), serde_json::to_vec(&dead).expect("json")).expect("write");
        let third = DatasetLock::acquire(dir.path(), "run", Duration::ZERO).expect("take over");
        assert_eq!(third.stale, Some(dead));
    }
}
