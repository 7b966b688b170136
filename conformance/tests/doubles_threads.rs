//! Bug 3 of the issue, alone in its test binary: the scenario counts the
//! threads of the whole process, and this double adds 1,000 of them.

mod support {
    pub mod double;
}

use support::double::{Bug, failure_of};

/// Every `wait` of the double gets its own polling thread.
#[test]
#[cfg_attr(
    not(target_os = "linux"),
    ignore = "counts threads through /proc/self/status, which only Linux has"
)]
fn thread_per_waiter_goes_red() {
    let failure = failure_of(
        Bug::ThreadPerWaiter,
        "many_waiters_cost_no_thread_or_connection_each",
    );
    assert!(
        failure.contains("does not cost a connection (or a thread) per waiter")
            && failure.contains("threads to the process"),
        "the failure quotes the guarantee and counts the threads: {failure}"
    );
}
