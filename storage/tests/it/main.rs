//! corelog-storage integration tests: one binary (see the brief), modules by concern.
//!
//! `contract` runs the same suite against SimDisk and against real files with direct I/O;
//! `prop` drives random appends, syncs, crashes and reopens on SimDisk; `crash` kills a
//! real appending process with SIGKILL and checks what survived.

mod contract;
mod crash;
mod prop;

use std::future::Future;

use corelog_storage::GlommioDisk;

/// Runs `body` on a fresh glommio executor with a `GlommioDisk` in a new temp dir on the
/// real filesystem (not tmpfs: O_DIRECT must hit the device).
pub fn with_glommio_disk<F, Fut>(body: F)
where
    F: FnOnce(GlommioDisk) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let dir = tempfile::Builder::new()
        .prefix("corelog-storage-it-")
        .tempdir_in(std::env::temp_dir())
        .expect("temp dir");
    let path = dir.path().to_path_buf();
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let disk = GlommioDisk::open_dir(&path).await.expect("open dir");
            body(disk).await
        })
        .expect("spawn executor")
        .join()
        .expect("executor thread");
    drop(dir);
}
