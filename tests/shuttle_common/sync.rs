//! What the client files compiled into the Shuttle checks import as
//! `super::sync` (src/client/mod.rs has the production one): parking_lot's
//! mutex with a Shuttle scheduling point before each lock and after each
//! unlock, tokio's `Notify`, and spawning on Shuttle's executor.

pub use tokio::sync::Notify;

use std::future::Future;

/// A scheduling point, inside a Shuttle test (the files' own unit tests,
/// compiled into the checks too, run outside one).
pub fn point() {
    if shuttle::current::try_get_current_task().is_some() && !std::thread::panicking() {
        shuttle::thread::yield_now();
    }
}

/// Runs `f` as a Shuttle task (detached, as `tokio::spawn`'s are when
/// their handle is dropped).
pub fn spawn<F>(f: F)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    drop(shuttle::future::spawn(f));
}

#[derive(Default)]
pub struct Mutex<T>(parking_lot::Mutex<T>);

pub struct Guard<'a, T>(Option<parking_lot::MutexGuard<'a, T>>);

impl<T> Mutex<T> {
    pub fn new(t: T) -> Self {
        Mutex(parking_lot::Mutex::new(t))
    }
    /// Never held across a scheduling point: Shuttle runs one task at a
    /// time, so the critical section is atomic, and the points around it
    /// are where other tasks get in.
    pub fn lock(&self) -> Guard<'_, T> {
        point();
        Guard(Some(self.0.lock()))
    }
}

impl<T> std::ops::Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.0.as_ref().expect("guard in use")
    }
}

impl<T> std::ops::DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.as_mut().expect("guard in use")
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        self.0.take();
        point();
    }
}
