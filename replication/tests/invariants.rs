//! The replication core must stay sans-IO: no async runtime in its dependency graph, and
//! no clock or filesystem access in its source. Checked here so that a convenient
//! `use tokio::...` or `Instant::now()` fails the build's tests, not a review.

use std::process::Command;

#[test]
fn no_runtime_in_the_dependency_graph() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-p",
            "corelog-replication",
            "-e",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains(&"corelog-storage"),
        "sanity: the tree lists dependencies:\n{tree}"
    );
    for banned in ["glommio", "madsim", "tokio", "async-std", "io-uring", "mio"] {
        assert!(
            !names.contains(&banned),
            "corelog-replication depends on {banned}:\n{tree}"
        );
    }
}

#[test]
fn no_clock_or_filesystem_in_the_source() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for banned in [
            "Instant::now",
            "SystemTime",
            "std::fs",
            "std::net",
            "std::thread",
            "thread_rng",
        ] {
            assert!(!text.contains(banned), "{} uses {banned}", path.display());
        }
        checked += 1;
    }
    assert!(
        checked >= 5,
        "expected the crate's source files, found {checked}"
    );
}
