//! How many `?wait=` creates (`POST /v1/session_queues?wait=30s`) one
//! access key holds open on this hub at once. Each holds a connection and
//! a task for up to two minutes; without a cap a key within its quota
//! could hold about two thousand (120 s × its calls a minute).

use std::collections::HashMap;
use std::sync::Mutex;

/// Waiting creates per access key and hub. Calls past it are refused
/// with 429 before anything is queued; a create without `wait` is never
/// counted.
pub const MAX_WAITS_PER_KEY: u32 = 16;

/// The waiting creates each key holds here.
#[derive(Default)]
pub struct Waits {
    held: Mutex<HashMap<String, u32>>,
}

/// One waiting create, counted until dropped.
pub struct Held<'a> {
    waits: &'a Waits,
    key_id: String,
}

impl Waits {
    /// Counts one more waiting create for `key_id`, unless it holds
    /// [`MAX_WAITS_PER_KEY`] already.
    pub fn take(&self, key_id: &str) -> Option<Held<'_>> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(key_id.to_string()).or_default();
        if *count >= MAX_WAITS_PER_KEY {
            return None;
        }
        *count += 1;
        Some(Held {
            waits: self,
            key_id: key_id.to_string(),
        })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut held = self.waits.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.key_id) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.key_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_the_cap_and_a_dropped_wait_frees_its_place() {
        let waits = Waits::default();
        let held: Vec<Held<'_>> = (0..MAX_WAITS_PER_KEY)
            .map(|_| waits.take("k").expect("under the cap"))
            .collect();
        assert!(waits.take("k").is_none());
        // Another key is counted apart.
        assert!(waits.take("other").is_some());
        drop(held);
        assert!(waits.take("k").is_some());
        assert!(waits.held.lock().unwrap().is_empty());
    }
}
