//! The suite against a third party's store (a `Mutex<HashMap>` double, see
//! `support/double.rs`): green without bugs, red on each bug the issue found
//! it passing, every run. (Thread per waiter: `doubles_threads.rs`, alone in
//! its binary, since it adds 1,000 threads to the process that another
//! test's thread count would see.)

mod support {
    pub mod double;
}

use support::double::{Bug, Doubles, failure_of, failure_with_child};

mcp_authkit_conformance::conformance_tests! {
    // Every scenario passes the double without bugs.
    correct {
        backend: Doubles(Bug::None),
        process_local,
    }
    // The whole suite on the double whose active-flow index joins keys with
    // ':': the one scenario that catches it is a known failure, and
    // `known_failures_still_fail` checks that it still fails, every run.
    colon_joined_active_index {
        backend: Doubles(Bug::ColonJoinedActiveIndex),
        process_local,
        known_failures: {
            keys_isolated_in_every_structure: "the double keys its active-flow index by provider + ':' + subject",
        },
    }
}

/// Bug 1 of the issue: `wait` looks, then subscribes.
#[test]
fn look_then_subscribe_goes_red() {
    let failure = failure_of(Bug::LookThenSubscribe, "complete_racing_the_start_of_wait");
    assert!(
        failure.contains("no completion is ever missed") && failure.contains("seen:"),
        "the failure quotes the guarantee and what was seen: {failure}"
    );
}

/// Bug 2 of the issue: the active-flow index joins provider and subject
/// with ':'; the failure names the colliding key.
#[test]
fn colon_joined_active_index_goes_red() {
    let failure = failure_of(
        Bug::ColonJoinedActiveIndex,
        "keys_isolated_in_every_structure",
    );
    assert!(
        failure.contains("Keys are isolated in every structure")
            && failure.contains("active-flow index"),
        "the failure quotes the guarantee and says what joined: {failure}"
    );
}

/// Bug 3 of the issue, for connections: every `wait` holds its own.
#[test]
fn connection_per_waiter_goes_red() {
    let failure = failure_of(
        Bug::ConnectionPerWaiter,
        "many_waiters_cost_no_thread_or_connection_each",
    );
    assert!(
        failure.contains("does not cost a connection (or a thread) per waiter")
            && failure.contains("connections"),
        "the failure quotes the guarantee and counts the connections: {failure}"
    );
}

/// A process-local store whose configuration forgot `process_local`: the
/// cross-process scenario says plainly what is wrong.
#[test]
fn a_process_local_store_declared_shared_fails_plainly() {
    let failure = failure_with_child(
        Bug::None,
        "cross_process",
        Some(concat!(
            module_path!(),
            "::correct::conformance_child_entry"
        )),
    );
    assert!(
        failure.contains("a second process sees none of the first's data")
            && failure.contains("process_local"),
        "the failure says the second process sees nothing, and what to do: {failure}"
    );
}
