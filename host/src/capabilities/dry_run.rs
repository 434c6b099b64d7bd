//! The dry run of `sluice check`: a writer is opened against its grants, but
//! nothing it is granted is reached.
//!
//! A writer's `open` parses its configuration first and then connects, so
//! opening it is the one way to have the plugin itself judge its configuration
//! (the WIT contract has no separate check). Under a dry run
//! ([`super::Grants::dry_run`]) each capability still checks the grant, so a
//! name, URL or address that is not granted is refused as at run time, and then
//! withholds what was granted:
//!
//! - `postgres`: opening a granted connection fails with a `retriable` error
//!   that says it is a dry run; nothing connects;
//! - `http`: a request under a granted URL fails as a connection error
//!   (retriable for the SDK) and is not sent; no host name is looked up;
//! - `tcp`: name lookups fail (retriable for the SDK); a connect to a granted
//!   address is refused before it is made (the SDK reads that as
//!   `access-denied`, a configuration error, which [`DryRun::withheld_tcp`] lets
//!   `check` tell apart);
//! - `directory`: the granted folder is not created. When it exists the
//!   plugin sees it read-only; when it does not, it sees an empty read-only
//!   folder in its place (what it would find at the first run), made in the
//!   system's temporary folder and removed when the dry run ends.
//!
//! What was withheld is recorded, so that `check` does not blame the
//! configuration for an error the dry run caused. The stores themselves are not
//! checked (reachable, table present, password right): that needs connecting.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What one dry run withheld from a writer instance.
#[derive(Default)]
pub struct DryRun {
    withheld: Mutex<Vec<Withheld>>,
    /// The empty folder shown in place of a granted directory that does not
    /// exist yet; removed on drop.
    placeholder: Mutex<Option<PathBuf>>,
}

/// Something a dry run did not give a plugin although it was granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Withheld {
    /// A postgres connection, by grant name.
    Postgres(String),
    /// An HTTP request, to this URL (without its query).
    Http(String),
    /// A TCP connection, to this address.
    Tcp(String),
    /// Writing to the granted directory: the plugin sees it read-only (or an
    /// empty stand-in when it does not exist yet).
    Directory(String),
}

impl fmt::Display for Withheld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Withheld::Postgres(name) => write!(f, "postgres connection `{name}`"),
            Withheld::Http(url) => write!(f, "HTTP request to {url}"),
            Withheld::Tcp(address) => write!(f, "TCP connection to {address}"),
            Withheld::Directory(dir) => write!(f, "writing to directory {dir}"),
        }
    }
}

impl fmt::Debug for DryRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DryRun")
            .field("withheld", &self.withheld())
            .finish()
    }
}

/// What a capability answers in place of what it withheld, for the plugin's
/// error message.
pub(crate) const NOT_REACHED: &str = "dry run of `sluice check`: not reached";

impl DryRun {
    /// A dry run that withheld nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `what` was withheld.
    pub(crate) fn withhold(&self, what: Withheld) {
        let mut withheld = self.withheld.lock().unwrap_or_else(|p| p.into_inner());
        if !withheld.contains(&what) {
            withheld.push(what);
        }
    }

    /// Everything withheld so far, in order.
    pub fn withheld(&self) -> Vec<Withheld> {
        self.withheld
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The folder the plugin sees as its granted directory `dir`: `dir` itself
    /// when it exists, else an empty folder made for the dry run (a granted
    /// directory is created only when a pipeline starts).
    pub(crate) fn directory_view(&self, dir: &Path) -> Result<PathBuf, String> {
        self.withhold(Withheld::Directory(dir.display().to_string()));
        if dir.is_dir() {
            return Ok(dir.to_path_buf());
        }
        let mut placeholder = self.placeholder.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(path) = placeholder.as_ref() {
            return Ok(path.clone());
        }
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "sluice-check-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).map_err(|e| {
            format!(
                "cannot make an empty folder {} to stand in for the granted directory {} during the check: {e}",
                path.display(),
                dir.display()
            )
        })?;
        *placeholder = Some(path.clone());
        Ok(path)
    }

    /// Whether a TCP connection to a granted address was refused: the SDK
    /// reports that as a configuration error (`access-denied`).
    pub fn withheld_tcp(&self) -> bool {
        self.withheld()
            .iter()
            .any(|w| matches!(w, Withheld::Tcp(_)))
    }
}

impl Drop for DryRun {
    fn drop(&mut self) {
        let placeholder = self
            .placeholder
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(path) = placeholder.take() {
            // Empty: the plugin saw it read-only.
            let _ = std::fs::remove_dir(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_each_withheld_thing_once() {
        let run = DryRun::new();
        assert!(!run.withheld_tcp());
        run.withhold(Withheld::Postgres("warehouse".into()));
        run.withhold(Withheld::Postgres("warehouse".into()));
        run.withhold(Withheld::Tcp("127.0.0.1:6379".into()));
        assert_eq!(run.withheld().len(), 2);
        assert!(run.withheld_tcp());
        assert_eq!(
            run.withheld()[0].to_string(),
            "postgres connection `warehouse`"
        );
    }

    #[test]
    fn a_missing_directory_is_not_created_and_its_stand_in_is_removed() {
        let missing = std::env::temp_dir().join(format!("sluice-never-{}", std::process::id()));
        let run = DryRun::new();
        let view = run.directory_view(&missing).unwrap();
        assert_ne!(view, missing);
        assert!(view.is_dir());
        assert!(!missing.exists());
        assert_eq!(run.directory_view(&missing).unwrap(), view);
        drop(run);
        assert!(!view.exists());

        let existing = std::env::temp_dir();
        assert_eq!(DryRun::new().directory_view(&existing).unwrap(), existing);
    }
}
