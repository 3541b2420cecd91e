# Convenience recipes; each is one plain command you can also run by hand.

# Run every test (the README's test command).
test:
    cargo test --workspace

# What CI runs.
ci:
    bash .ci/run

fmt:
    cargo fmt --all

clippy:
    cargo clippy --all-targets -- -D warnings

# The storage benchmark (engine vs raw O_DIRECT); SIZE like 2GiB or 256MiB.
bench-storage SIZE="2GiB":
    cargo run --release -p corelog-bench -- storage --size {{SIZE}}
