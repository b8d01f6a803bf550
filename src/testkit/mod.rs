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
    pub fn new() -> Self {
        Dir {
            tmp: tempfile::Builder::new()
                .prefix("replayguard-test-")
                .tempdir()
                .expect("temp dir"),
        }
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
