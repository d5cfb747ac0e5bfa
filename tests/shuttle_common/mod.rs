//! What the Shuttle checks share (the `sync` they compile the client's files
//! against is sync.rs beside this file, included by path where it is used).

/// Schedules tried per check: `SHUTTLE_ITERATIONS`, 2000 by default.
pub fn iterations() -> usize {
    std::env::var("SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Runs `f` under `iterations()` random schedules (Shuttle's PCT scheduler,
/// with few preemptions, missed every bug planted in the checked files).
pub fn check(f: impl Fn() + Send + Sync + 'static) {
    shuttle::check_random(f, iterations());
}
