//! # mcp-authkit-conformance
//!
//! The scenario suite every mcp-authkit backend passes: token CRUD and key
//! isolation in every keyed structure, revisions and compare-and-swap,
//! refresh leases, pending flows with exactly-once take, one active flow per
//! key, completion and waiting across replicas (also racing the start of a
//! wait), the cost of many waiters, expiry and purge, the token lifecycle
//! running on the backend, and a scenario that races a second OS process.
//!
//! # Write your own backend
//!
//! From an empty crate to a green run, in four steps.
//!
//! **1. Implement the stores.** Your store implements
//! [`TokenStore`] and [`PendingStore`] (from `mcp-authkit-core`; their docs
//! list every guarantee, in the words this suite's failures quote).
//!
//! **2. Add the suite** as a dev-dependency:
//!
//! ```toml
//! [dev-dependencies]
//! mcp-authkit-conformance = "..."
//! ```
//!
//! **3. Write an adapter**, a [`Backend`]: it creates a fresh, empty
//! namespace per scenario (a new database file, a unique key prefix) and
//! opens independent store instances on it, which play the replicas of a
//! deployment (each with its own connections, as separate servers would
//! have).
//!
//! **4. Name its configurations** in one test file, `tests/conformance.rs`:
//! each becomes a module with one test per scenario.
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::{Arc, Mutex};
//! use mcp_authkit_conformance::{async_trait, Backend, Replica, SetupError};
//! use mcp_authkit_store_memory::MemoryStore; // stands in for your store
//!
//! /// Your backend: fresh namespaces, and replicas opened on one.
//! #[derive(Default)]
//! pub struct MyBackend {
//!     namespaces: Mutex<HashMap<String, MemoryStore>>,
//! }
//!
//! #[async_trait]
//! impl Backend for MyBackend {
//!     fn name(&self) -> &str { "my-store" }
//!     async fn create_namespace(&self) -> Result<String, SetupError> {
//!         let name = mcp_authkit_core::random_urlsafe(8);
//!         self.namespaces.lock().unwrap().insert(name.clone(), MemoryStore::new());
//!         Ok(name)
//!     }
//!     async fn open(&self, namespace: &str) -> Result<Replica, SetupError> {
//!         let store = self.namespaces.lock().unwrap().get(namespace).cloned().ok_or("unknown")?;
//!         let store = Arc::new(store);
//!         Ok(Replica::new(store.clone(), store))
//!     }
//!     async fn cleanup(&self, namespace: &str) {
//!         self.namespaces.lock().unwrap().remove(namespace);
//!     }
//! }
//!
//! mcp_authkit_conformance::conformance_tests! {
//!     // `cargo test` lists `plain::take_exactly_once`, `plain::odd_keys`, ...
//!     plain {
//!         backend: MyBackend::default(),
//!         // This store lives in one process: the cross-process scenario is
//!         // listed as ignored, with the reason.
//!         process_local,
//!     }
//!     // A second configuration of the same store (say, wrapped); a scenario
//!     // you know it fails is listed as ignored with your reason, and
//!     // `known_failures_still_fail` goes red the day it passes.
//!     wrapped {
//!         backend: MyBackend::default(),
//!         process_local,
//!         known_failures: {
//!             scan_lists_every_key: "issue 42: scan skips keys longer than 1 KiB",
//!         },
//!     }
//! }
//! # fn main() {
//! #     // The doc test runs one scenario by hand.
//! #     mcp_authkit_conformance::run_scenario(
//! #         "take_exactly_once",
//! #         |harness| Box::pin(mcp_authkit_conformance::scenarios::take_exactly_once(harness)),
//! #         MyBackend::default(),
//! #         None,
//! #     );
//! # }
//! ```
//!
//! Then `cargo test --test conformance`. A backend with one configuration
//! may also write `conformance_tests!(MyBackend::default())` (shared) or
//! `conformance_tests!(MyBackend::default(); process_local)`, which put the
//! tests at the top of the file instead of in a module.
//!
//! ## Shared or process-local: one declaration
//!
//! A backend is *shared* unless its configuration says `process_local`.
//! Shared means: store instances opened on one namespace in **different OS
//! processes** see the same tokens, leases, flows and completions, and a
//! completion in one process wakes waiters in the other. The suite checks it
//! for real: the `cross_process` scenario re-runs your test binary as a
//! child process (through the ignored helper test `conformance_child_entry`,
//! with `--ignored --exact`; it is a helper, not a test, and does nothing
//! when you run it yourself), passes it the namespace's name in an
//! environment variable, and races it. So [`Backend::open`] must reach the
//! same data from the namespace name alone, in a fresh process (a file
//! path, a key prefix, a schema name; never a handle to this process's
//! memory).
//!
//! The macro's configuration is the only declaration (the stores and the
//! adapter declare nothing): it is what decides which scenarios run, so it
//! is the one that counts. A backend that is really process-local but not
//! declared so fails `cross_process` with "a second process sees none of
//! the first's data"; one declared `process_local` that is in fact shared
//! only loses that check, which `cargo test` shows as ignored.
//!
//! ## What else a backend may tell the suite
//!
//! - [`Backend::connections`]: how many connections the replicas of a
//!   namespace hold in this process. With it, the many-waiters scenario
//!   checks that 1,000 waiters do not cost a connection each; without it,
//!   only threads are counted (Linux, through `/proc/self/status`; on other
//!   systems that scenario is ignored, and says why).
//!
//! ## Reading a failure
//!
//! Each test is named after the guarantee it checks (`take_exactly_once`,
//! `complete_racing_the_start_of_wait`, ...), and each failed check quotes
//! the guarantee in the words of the trait docs, then what was seen:
//!
//! ```text
//! guarantee broken: "complete wakes every waiter in every process; a wait that
//! starts after complete returns the outcome at once (it is kept for keep_for);
//! no completion is ever missed. (PendingStore)"
//!   seen: 11 waits (of the first 24 rounds of 240) that started about when
//!   another replica completed the flow missed the completion (round trip
//!   312.77µs, completions spread over 4.00ms; a store that reads the
//!   outcome, then subscribes, loses a completion landing in between):
//!     round 1: wait returned None after 2.00s, complete started 3.82ms after
//!     the wait began
//! ```
//!
//! (That is a Redis store whose `wait` reads the outcome before it
//! subscribes.) Find the guarantee in the docs of [`TokenStore`] or
//! [`PendingStore`]; the scenario's own docs (in [`scenarios`] and
//! [`lifecycle`]) say how it provokes the failure.
//!
//! Run one scenario alone with `cargo test --test conformance
//! plain::complete_racing_the_start_of_wait -- --exact`; a scenario listed
//! as a known failure runs with `-- --ignored --exact <name>`, and shows its
//! failure. Each scenario has a 60 second limit and runs on its own
//! multi-threaded runtime; a whole backend's suite runs well under a
//! minute, as the scenarios run in parallel.

#![warn(missing_docs)]

mod child;
pub mod lifecycle;
pub mod scenarios;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use mcp_authkit_core::{PendingStore, TokenStore, async_trait};

#[doc(hidden)]
pub use child::run_child_if_requested;

/// Why a backend could not set up a scenario.
pub type SetupError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One store instance, as one replica of an application would open it.
#[derive(Clone)]
pub struct Replica {
    /// Its token store.
    pub tokens: Arc<dyn TokenStore>,
    /// Its pending store.
    pub pending: Arc<dyn PendingStore>,
}

impl Replica {
    /// A replica from its two stores (often the same object).
    pub fn new(tokens: Arc<dyn TokenStore>, pending: Arc<dyn PendingStore>) -> Self {
        Replica { tokens, pending }
    }
}

/// A backend under test: how to get fresh namespaces and open replicas.
///
/// Whether it is shared across processes is declared once, in
/// [`conformance_tests!`] (`process_local`), not here.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A short name for messages.
    fn name(&self) -> &str;

    /// Prepares a fresh, empty namespace for one scenario and returns its
    /// name. Every [`open`](Self::open) of that name, in any process (for a
    /// shared backend), must see the same data, and no other namespace's.
    async fn create_namespace(&self) -> Result<String, SetupError>;

    /// Opens a new, independent store instance on `namespace`.
    async fn open(&self, namespace: &str) -> Result<Replica, SetupError>;

    /// Removes what a scenario left in `namespace`.
    async fn cleanup(&self, namespace: &str) {
        let _ = namespace;
    }

    /// How many connections to the backing service the replicas of
    /// `namespace` hold in this process right now (pooled, subscribed or
    /// idle), if the backend can count them; `None` (the default) when it
    /// cannot or has none. With it the suite checks that waiting on many
    /// flows does not cost a connection per waiter.
    async fn connections(&self, namespace: &str) -> Option<usize> {
        let _ = namespace;
        None
    }
}

/// What a scenario gets: the backend and its namespace.
#[derive(Clone)]
pub struct Harness {
    backend: Arc<dyn Backend>,
    namespace: String,
    child_test: Option<&'static str>,
}

impl Harness {
    /// A harness over `namespace` of `backend`. `child_test` is the test name
    /// that runs [`run_child_if_requested`] (the macro passes it); without it,
    /// cross-process scenarios cannot run.
    pub fn new(
        backend: Arc<dyn Backend>,
        namespace: String,
        child_test: Option<&'static str>,
    ) -> Self {
        Harness {
            backend,
            namespace,
            child_test,
        }
    }

    /// The namespace of this scenario.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &str {
        self.backend.name()
    }

    /// The connections the backend reports for this namespace, if it counts
    /// them ([`Backend::connections`]).
    pub async fn connections(&self) -> Option<usize> {
        self.backend.connections(&self.namespace).await
    }

    /// Opens a replica; a setup failure fails the scenario with its cause.
    pub async fn replica(&self) -> Replica {
        match self.backend.open(&self.namespace).await {
            Ok(replica) => replica,
            Err(error) => panic!(
                "backend {:?} could not open namespace {:?}: {error}",
                self.backend.name(),
                self.namespace
            ),
        }
    }

    /// Opens `n` independent replicas.
    pub async fn replicas(&self, n: usize) -> Vec<Replica> {
        let mut replicas = Vec::with_capacity(n);
        for _ in 0..n {
            replicas.push(self.replica().await);
        }
        replicas
    }

    pub(crate) fn child_test(&self) -> Option<&'static str> {
        self.child_test
    }
}

/// A scenario: an async function of a [`Harness`].
pub type Scenario = fn(Harness) -> Pin<Box<dyn Future<Output = ()> + Send>>;

/// How long one scenario may take before it counts as hung.
pub const SCENARIO_LIMIT: Duration = Duration::from_secs(60);

/// Runs one scenario on a fresh namespace of `backend`, on its own
/// multi-threaded runtime, and cleans the namespace up afterwards (also when
/// the scenario fails). Panics, failing the test, if the scenario fails.
pub fn run_scenario(
    name: &str,
    scenario: Scenario,
    backend: impl Backend,
    child_test: Option<&'static str>,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime for the scenario");
    let backend: Arc<dyn Backend> = Arc::new(backend);
    runtime.block_on(async move {
        let namespace = match backend.create_namespace().await {
            Ok(namespace) => namespace,
            Err(error) => panic!(
                "backend {:?} could not create a namespace for {name}: {error}",
                backend.name()
            ),
        };
        let harness = Harness::new(Arc::clone(&backend), namespace.clone(), child_test);
        let outcome = tokio::time::timeout(SCENARIO_LIMIT, tokio::spawn(scenario(harness))).await;
        backend.cleanup(&namespace).await;
        let guarantee = scenarios::guarantee_of(name);
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(join_error)) => match join_error.try_into_panic() {
                Ok(panic) => {
                    let message = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied());
                    match message {
                        // A check that names its guarantee says it all.
                        Some(message) if !message.contains("guarantee broken:") => panic!(
                            "{}",
                            scenarios::broke(
                                guarantee,
                                format_args!("in scenario {name}: {message}")
                            )
                        ),
                        _ => std::panic::resume_unwind(panic),
                    }
                }
                Err(error) => panic!("scenario {name} was cancelled: {error}"),
            },
            Err(_) => panic!(
                "{}",
                scenarios::broke(
                    guarantee,
                    format_args!(
                        "scenario {name} did not finish within {SCENARIO_LIMIT:?} (a wait that \
                         never wakes, or a lock or lease never released?)"
                    )
                )
            ),
        }
    });
}

/// Calls `visit!(module scenario);` for every scenario of the suite, in one
/// place, so the macro's tests and [`scenario_by_name`] cannot drift apart.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_each_scenario {
    ($visit:ident) => {
        $visit!(scenarios token_crud_and_isolation);
        $visit!(scenarios odd_keys);
        $visit!(scenarios keys_isolated_in_every_structure);
        $visit!(scenarios scan_lists_every_key);
        $visit!(scenarios revisions_and_compare_and_swap);
        $visit!(scenarios concurrent_compare_and_swap_has_one_winner);
        $visit!(scenarios stale_invalidation_keeps_newer_token);
        $visit!(scenarios lease_is_exclusive_across_replicas);
        $visit!(scenarios lease_release);
        $visit!(scenarios lease_expires_when_holder_dies);
        $visit!(scenarios releasing_an_expired_lease_reports_false);
        $visit!(scenarios pending_insert_get_take);
        $visit!(scenarios take_exactly_once);
        $visit!(scenarios pending_expiry);
        $visit!(scenarios one_active_flow_per_key);
        $visit!(scenarios complete_wakes_waiters_across_replicas);
        $visit!(scenarios complete_racing_the_start_of_wait);
        $visit!(scenarios complete_of_a_never_taken_flow_ends_it);
        $visit!(scenarios many_waiters_cost_no_thread_or_connection_each);
        $visit!(scenarios wait_times_out);
        $visit!(scenarios outcome_ttl);
        $visit!(scenarios purge_removes_expired_only);
        $visit!(scenarios huge_durations_mean_as_long_as_possible);
        $visit!(lifecycle single_flight_refresh_across_replicas);
        $visit!(lifecycle invalid_grant_leads_to_new_authorization);
        $visit!(lifecycle invalid_grant_spares_a_token_written_meanwhile);
        $visit!(lifecycle transient_refresh_failure_keeps_token);
        $visit!(lifecycle flow_completes_across_replicas);
        $visit!(lifecycle huge_durations_in_the_lifecycle);
        $visit!(lifecycle cross_process);
    };
}

/// The scenario named `name` (as its test is named), if there is one.
pub fn scenario_by_name(name: &str) -> Option<Scenario> {
    let mut found: Option<Scenario> = None;
    macro_rules! visit {
        ($module:ident $scenario:ident) => {
            if name == stringify!($scenario) {
                let scenario: Scenario = |harness| Box::pin($module::$scenario(harness));
                found = Some(scenario);
            }
        };
    }
    __conformance_each_scenario!(visit);
    found
}

/// Every scenario's name, in the suite's order.
pub fn scenario_names() -> Vec<&'static str> {
    let mut names = Vec::new();
    macro_rules! visit {
        ($module:ident $scenario:ident) => {
            names.push(stringify!($scenario));
        };
    }
    __conformance_each_scenario!(visit);
    names
}

/// Expands to one `#[test]` per scenario for each named configuration of a
/// backend, plus the helpers the suite needs.
///
/// ```ignore
/// mcp_authkit_conformance::conformance_tests! {
///     plain { backend: MyBackend::default() }
///     encrypted {
///         backend: Encrypted::new(MyBackend::default()),
///         process_local,                       // optional
///         known_failures: {                    // optional
///             odd_keys: "issue 7: NUL bytes in subjects",
///         },
///     }
/// }
/// ```
///
/// Each configuration becomes a module (`plain::take_exactly_once`, ...)
/// that sees the file's items (`use super::*`). `backend` is an expression
/// evaluated afresh for every test. In a configuration:
///
/// - `process_local` declares that no other OS process sees the backend's
///   data; `cross_process` is then an ignored test with that reason.
///   Without it the backend is shared, and `cross_process` checks it by
///   running this test binary again as a second process. This is the only
///   place a backend's capabilities are declared.
/// - `known_failures` lists scenarios with the reason each fails: they are
///   ignored tests carrying the reason (run them with `--ignored` to see
///   the failure), and the test `known_failures_still_fail` fails loudly
///   when one of them passes, or names no scenario, so the list never goes
///   stale.
///
/// Besides, each configuration has `conformance_child_entry`, an ignored
/// helper (not a test) that the cross-process scenario runs in its child.
///
/// The one-configuration forms put the tests at the top of the file:
///
/// ```ignore
/// mcp_authkit_conformance::conformance_tests!(MyBackend::default());                // shared
/// mcp_authkit_conformance::conformance_tests!(MyBackend::default(); process_local); // in-process
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($($name:ident { $($config:tt)* })+) => {
        $(
            $crate::__conformance_config! { $name; $($config)* }
        )+
    };
    ($backend:expr) => {
        $crate::__conformance_body! { ($) $backend; skipped {}; known {} }
    };
    ($backend:expr; shared) => {
        $crate::__conformance_body! { ($) $backend; skipped {}; known {} }
    };
    ($backend:expr; process_local) => {
        $crate::__conformance_body! { ($) $backend;
            skipped { cross_process: "declared process_local in conformance_tests!: no other process sees this backend's data, so the cross-process guarantees are not checked" };
            known {}
        }
    };
}

/// Reads one named configuration.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_config {
    ($name:ident; backend: $backend:expr, process_local, known_failures: {
        $($failing:ident : $reason:literal),* $(,)?
    } $(,)?) => {
        $crate::__conformance_module! { $name; $backend;
            skipped { cross_process: "declared process_local in conformance_tests!: no other process sees this backend's data, so the cross-process guarantees are not checked" };
            known { $($failing: $reason),* }
        }
    };
    ($name:ident; backend: $backend:expr, known_failures: {
        $($failing:ident : $reason:literal),* $(,)?
    } $(,)?) => {
        $crate::__conformance_module! { $name; $backend;
            skipped {};
            known { $($failing: $reason),* }
        }
    };
    ($name:ident; backend: $backend:expr, process_local $(,)?) => {
        $crate::__conformance_module! { $name; $backend;
            skipped { cross_process: "declared process_local in conformance_tests!: no other process sees this backend's data, so the cross-process guarantees are not checked" };
            known {}
        }
    };
    ($name:ident; backend: $backend:expr $(,)?) => {
        $crate::__conformance_module! { $name; $backend; skipped {}; known {} }
    };
    ($name:ident; $($other:tt)*) => {
        ::std::compile_error!(::std::concat!(
            "conformance_tests!: configuration `", ::std::stringify!($name),
            "` must read `{ backend: <expr>, [process_local,] [known_failures: { scenario: \"reason\", ... },] }`"
        ));
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_module {
    ($name:ident; $backend:expr; skipped { $($skip:tt)* }; known { $($known:tt)* }) => {
        pub mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::__conformance_body! { ($) $backend; skipped { $($skip)* }; known { $($known)* } }
        }
    };
}

/// The tests of one configuration. `$d` is a `$` token, so the local macro
/// below can have metavariables of its own.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_body {
    (($d:tt) $backend:expr;
     skipped { $($skip:ident : $skip_reason:literal),* };
     known { $($failing:ident : $reason:literal),* }) => {
        macro_rules! __conformance_test {
            $(
                ($d module:ident $skip) => {
                    #[test]
                    #[ignore = $skip_reason]
                    fn $skip() {
                        $crate::refuse_skipped_scenario(::std::stringify!($skip), $skip_reason, $backend);
                    }
                };
            )*
            $(
                ($d module:ident $failing) => {
                    #[test]
                    #[ignore = $reason]
                    fn $failing() {
                        $crate::__conformance_run!($d module $failing; $backend);
                    }
                };
            )*
            ($d module:ident many_waiters_cost_no_thread_or_connection_each) => {
                #[test]
                #[cfg_attr(not(target_os = "linux"), ignore = "counts threads through /proc/self/status, which only Linux has")]
                fn many_waiters_cost_no_thread_or_connection_each() {
                    $crate::__conformance_run!($d module many_waiters_cost_no_thread_or_connection_each; $backend);
                }
            };
            ($d module:ident $d scenario:ident) => {
                #[test]
                fn $d scenario() {
                    $crate::__conformance_run!($d module $d scenario; $backend);
                }
            };
        }
        $crate::__conformance_each_scenario!(__conformance_test);

        $crate::__conformance_known_failures_check! { $backend; $($failing: $reason),* }

        /// Helper, not a test: the child process of the cross-process
        /// scenario (run with `--ignored --exact`); does nothing otherwise.
        #[test]
        #[ignore = "helper: the cross-process scenario runs it as its child process"]
        fn conformance_child_entry() {
            $crate::run_child_if_requested($backend);
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_run {
    ($module:ident $scenario:ident; $backend:expr) => {
        $crate::run_scenario(
            ::std::stringify!($scenario),
            |harness| ::std::boxed::Box::pin($crate::$module::$scenario(harness)),
            $backend,
            ::std::option::Option::Some(::std::concat!(
                ::std::module_path!(),
                "::conformance_child_entry"
            )),
        )
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_known_failures_check {
    ($backend:expr; ) => {};
    ($backend:expr; $($failing:ident : $reason:literal),+) => {
        /// The known failures still fail; one that passes now must leave
        /// the list, so its guarantee is checked again.
        #[test]
        fn known_failures_still_fail() {
            $crate::check_known_failures(
                &[$((::std::stringify!($failing), $reason)),+],
                || $backend,
                ::std::concat!(::std::module_path!(), "::conformance_child_entry"),
            );
        }
    };
}

/// What a skipped scenario does when run anyway (`--ignored`): it fails
/// with the reason, since the guarantee it stands for was not checked.
#[doc(hidden)]
pub fn refuse_skipped_scenario(scenario: &str, reason: &str, backend: impl Backend) {
    panic!(
        "scenario {scenario} is not checked on backend {:?}: {reason}",
        backend.name()
    );
}

/// Runs every known failure and fails, naming them, if any passes now or
/// names no scenario.
#[doc(hidden)]
pub fn check_known_failures<B: Backend>(
    failures: &[(&str, &str)],
    backend: impl Fn() -> B,
    child_test: &'static str,
) {
    let mut stale = Vec::new();
    for (name, reason) in failures {
        let Some(scenario) = scenario_by_name(name) else {
            stale.push(format!(
                "{name:?} is listed in known_failures but names no scenario (the suite has: {})",
                scenario_names().join(", ")
            ));
            continue;
        };
        let backend = backend();
        let passed = std::panic::catch_unwind(AssertUnwindSafe(|| {
            run_scenario(name, scenario, backend, Some(child_test))
        }))
        .is_ok();
        if passed {
            stale.push(format!(
                "{name} is listed in known_failures ({reason:?}) but passes now: \
                 remove it from the list, so its guarantee is checked again"
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "known_failures is out of date:\n  {}",
        stale.join("\n  ")
    );
}

/// The workspace README's examples, compiled as doc tests so they cannot
/// drift from the macro.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
