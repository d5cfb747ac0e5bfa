//! A byte-budgeted LRU of whole data objects, shared by volumes (sheepfs `-k`).
//! (Implementation in progress.)

/// Object cache keyed by data oid.
#[derive(Debug)]
pub struct ObjectCache {
    budget: u64,
}

impl ObjectCache {
    pub fn new(budget_bytes: u64) -> Self {
        ObjectCache {
            budget: budget_bytes,
        }
    }
    pub fn budget(&self) -> u64 {
        self.budget
    }
    /// Drops everything.
    pub fn clear(&self) {}
}
