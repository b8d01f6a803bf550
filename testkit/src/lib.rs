//! Support for the integration tests, the benchmarks and the fault harness:
//! temp dirs, a real Kafka-protocol broker per test, producers, consumers and
//! a handle on a `replayguard run` process. Not used by the detector itself.

pub mod kafka;
pub mod verify;

use std::path::PathBuf;

/// A temporary directory that lives as long as the value.
pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Default for Dir {
    fn default() -> Self {
        Self::new()
    }
}

impl Dir {
    /// A fresh temporary directory, removed at the end of the test unless
    /// `REPLAYGUARD_KEEP_TEST_DIRS` is set (to read detector logs afterwards).
    pub fn new() -> Self {
        let keep = std::env::var_os("REPLAYGUARD_KEEP_TEST_DIRS").is_some();
        let tmp = tempfile::Builder::new()
            .prefix("replayguard-test-")
            .disable_cleanup(keep)
            .tempdir()
            .expect("temp dir");
        if keep {
            eprintln!("test dir kept: {}", tmp.path().display());
        }
        Dir { tmp }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write");
        p
    }
}

/// The `replayguard` binary: $REPLAYGUARD_BIN, else next to the running
/// executable's target dir (tests and benches live in target/*/deps).
pub fn replayguard_bin() -> PathBuf {
    if let Ok(p) = std::env::var("REPLAYGUARD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("replayguard")
}
