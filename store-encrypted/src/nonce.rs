//! Nonces: 96 bits from the operating system's CSPRNG for every encryption.
//!
//! A system call for 12 bytes costs more than the encryption it serves, so
//! each thread draws OS randomness in batches and hands out each byte once.
//! A batch copied into a forked child would make parent and child hand out
//! the same nonces, which breaks AES-GCM; so on Unix a fork handler bumps a
//! generation counter in the child, and a batch from an older generation is
//! thrown away before use. Where the handler cannot be registered, every
//! nonce comes straight from the OS.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes drawn per system call: 40 nonces.
const BATCH: usize = 40 * 12;

/// How many forks this process's memory has been through.
static GENERATION: AtomicU64 = AtomicU64::new(0);

struct Batch {
    bytes: [u8; BATCH],
    /// Bytes already handed out (all of them when empty or stale).
    used: usize,
    generation: u64,
}

thread_local! {
    static BATCH_OF_THIS_THREAD: RefCell<Batch> = const {
        RefCell::new(Batch { bytes: [0; BATCH], used: BATCH, generation: 0 })
    };
}

/// Fills `out` with fresh OS randomness that no other call, thread or
/// forked process gets.
///
/// # Panics
/// If the operating system has no randomness to give: encrypting with a
/// predictable or repeated nonce would be worse than stopping.
pub(crate) fn fill(out: &mut [u8]) {
    if out.len() > BATCH || !fork_safe() {
        return from_os(out);
    }
    let served = BATCH_OF_THIS_THREAD.try_with(|cell| {
        let mut batch = cell.borrow_mut();
        let generation = GENERATION.load(Ordering::Acquire);
        if batch.generation != generation || BATCH - batch.used < out.len() {
            from_os(&mut batch.bytes);
            batch.used = 0;
            batch.generation = generation;
        }
        let start = batch.used;
        batch.used += out.len();
        out.copy_from_slice(&batch.bytes[start..batch.used]);
    });
    // The thread is being torn down and its batch is gone.
    if served.is_err() {
        from_os(out);
    }
}

fn from_os(out: &mut [u8]) {
    getrandom::fill(out).expect("the OS random number generator failed");
}

/// Whether a fork can never hand a child a batch the parent also uses.
fn fork_safe() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(register_fork_handler)
}

#[cfg(unix)]
fn register_fork_handler() -> bool {
    extern "C" fn in_child_after_fork() {
        // Async-signal-safe: one atomic increment.
        GENERATION.fetch_add(1, Ordering::AcqRel);
    }
    // SAFETY: registers a handler that only touches an atomic, as POSIX
    // requires of code running in a child between fork and exec.
    unsafe { libc::pthread_atfork(None, None, Some(in_child_after_fork)) == 0 }
}

#[cfg(not(unix))]
fn register_fork_handler() -> bool {
    // No fork: nothing can copy a batch into another process.
    true
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn nonces_never_repeat_across_calls_and_threads() {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..5_000)
                        .map(|_| {
                            let mut nonce = [0u8; 12];
                            fill(&mut nonce);
                            nonce
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for thread in threads {
            for nonce in thread.join().unwrap() {
                assert!(seen.insert(nonce), "a nonce repeated");
            }
        }
        assert_eq!(seen.len(), 20_000);
    }

    #[test]
    fn a_fork_discards_the_batch() {
        let mut first = [0u8; 12];
        fill(&mut first);
        let before = BATCH_OF_THIS_THREAD.with_borrow(|batch| (batch.bytes, batch.used));
        // What the child's handler does after a fork.
        GENERATION.fetch_add(1, Ordering::AcqRel);
        let mut next = [0u8; 12];
        fill(&mut next);
        let after = BATCH_OF_THIS_THREAD.with_borrow(|batch| (batch.bytes, batch.used));
        assert_eq!(after.1, 12, "a fresh batch, of which one nonce is used");
        assert_ne!(after.0, before.0, "the old batch was replaced");
        assert_ne!(
            &next,
            &before.0[before.1..before.1 + 12],
            "not the old batch's next nonce"
        );
        assert!(
            fork_safe(),
            "the fork handler is registered on this platform"
        );
    }

    #[test]
    fn large_requests_come_straight_from_the_os() {
        let mut big = [0u8; BATCH + 1];
        fill(&mut big);
        assert!(big.iter().any(|&b| b != 0));
    }
}
