//! # mcp-authkit-conformance
//!
//! The scenario suite every mcp-authkit backend passes: token CRUD and key
//! isolation, revisions and compare-and-swap, refresh leases, pending flows
//! with exactly-once take, one active flow per key, completion and waiting
//! across replicas, expiry and purge, the token lifecycle running on the
//! backend, and a scenario that races a second OS process.
//!
//! # Validating your own backend
//!
//! Implement [`Backend`]: it creates a fresh namespace per scenario (a new
//! database file, a unique key prefix) and opens independent store instances
//! on it, which play the replicas of a deployment. Then, in a test file:
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::{Arc, Mutex};
//! use mcp_authkit_conformance::{async_trait, Backend, Capabilities, Replica, SetupError};
//! use mcp_authkit_store_memory::MemoryStore; // stands in for your store
//!
//! /// Your backend: fresh namespaces, and replicas opened on one.
//! #[derive(Default)]
//! struct MyBackend {
//!     namespaces: Mutex<HashMap<String, MemoryStore>>,
//! }
//!
//! #[async_trait]
//! impl Backend for MyBackend {
//!     fn name(&self) -> &str { "my-store" }
//!     // A store shared across processes declares SHARED, and then must open
//!     // a namespace from its name alone in another process.
//!     fn capabilities(&self) -> Capabilities { Capabilities::PROCESS_LOCAL }
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
//! // In tests/conformance.rs, one line makes a test of every scenario
//! // (`; process_local`: this backend cannot run the cross-process ones,
//! // which are listed as ignored):
//! //     mcp_authkit_conformance::conformance_tests!(MyBackend::default(); process_local);
//! // Here, one scenario run by hand:
//! mcp_authkit_conformance::run_scenario(
//!     "take_exactly_once",
//!     |harness| Box::pin(mcp_authkit_conformance::scenarios::take_exactly_once(harness)),
//!     MyBackend::default(),
//!     None,
//! );
//! ```
//!
//! `cargo test` then lists one test per scenario (`token_crud_and_isolation`,
//! `take_exactly_once`, ...), so a failure names the guarantee that broke.
//! The cross-process scenario re-runs your test binary as a child process
//! (through the hidden `conformance_child_entry` test) and opens the same
//! namespace there, so [`Backend::open`] must work from a namespace name
//! alone. A backend that declares [`Capabilities::PROCESS_LOCAL`] says so in
//! the macro too (`conformance_tests!(MyBackend::default(); process_local)`),
//! and `cargo test` lists the cross-process scenario as ignored, with the
//! reason.
//!
//! Each scenario has a 60 second limit; a whole backend's suite runs well
//! under a minute, as the scenarios run in parallel.

#![warn(missing_docs)]

mod child;
pub mod lifecycle;
pub mod scenarios;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use mcp_authkit_core::{Capabilities, PendingStore, TokenStore, async_trait};

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
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A short name for messages.
    fn name(&self) -> &str;

    /// What the backend can do. Declare the same in [`conformance_tests!`]: the
    /// scenarios it cannot run are then listed as ignored, with the reason.
    fn capabilities(&self) -> Capabilities;

    /// Prepares a fresh, empty namespace for one scenario and returns its
    /// name. Every [`open`](Self::open) of that name, in any process, must see
    /// the same data, and no other namespace's.
    async fn create_namespace(&self) -> Result<String, SetupError>;

    /// Opens a new, independent store instance on `namespace`.
    async fn open(&self, namespace: &str) -> Result<Replica, SetupError>;

    /// Removes what a scenario left in `namespace`.
    async fn cleanup(&self, namespace: &str) {
        let _ = namespace;
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

    /// The backend's capabilities.
    pub fn capabilities(&self) -> Capabilities {
        self.backend.capabilities()
    }

    /// The namespace of this scenario.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &str {
        self.backend.name()
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
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(join_error)) => match join_error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(error) => panic!("scenario {name} was cancelled: {error}"),
            },
            Err(_) => panic!("scenario {name} did not finish within {SCENARIO_LIMIT:?}"),
        }
    });
}

/// Expands to one `#[test]` per scenario for the backend `$backend` (an
/// expression evaluated afresh for each test), plus the hidden entry point
/// the cross-process scenario re-executes.
///
/// A backend that lives inside one process says so after a semicolon, and
/// the scenarios it cannot run show up in `cargo test` as ignored, with the
/// reason:
///
/// ```ignore
/// mcp_authkit_conformance::conformance_tests!(MyBackend::default());                // shared
/// mcp_authkit_conformance::conformance_tests!(MyBackend::default(); process_local); // in-process
/// ```
///
/// The declaration must match [`Backend::capabilities`]: a test of the
/// `process_local` form checks that the backend really is process-local,
/// and the cross-process scenario fails on a process-local backend that
/// was not declared so. A guarantee is thus either checked or visibly not.
///
/// Invoke it once per test binary; put it in a module to group the names.
#[macro_export]
macro_rules! conformance_tests {
    ($backend:expr) => {
        $crate::conformance_tests!($backend; shared);
    };
    ($backend:expr; shared) => {
        $crate::__conformance_common_scenarios!($backend);
        $crate::__conformance_scenarios! { $backend;
            lifecycle::cross_process,
        }

        /// Entry point of the cross-process scenario's child process; does
        /// nothing when run as a normal test.
        #[test]
        fn conformance_child_entry() {
            $crate::run_child_if_requested($backend);
        }
    };
    ($backend:expr; process_local) => {
        $crate::__conformance_common_scenarios!($backend);
        $crate::__conformance_ignored_scenarios! { $backend;
            "the backend is process-local (Capabilities::PROCESS_LOCAL): no other process sees its data";
            lifecycle::cross_process,
        }

        /// The backend is process-local, as the invocation declared.
        #[test]
        fn conformance_declared_process_local() {
            $crate::check_declared_capabilities($backend, $crate::Capabilities::PROCESS_LOCAL);
        }
    };
}

/// The scenarios every backend runs.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_common_scenarios {
    ($backend:expr) => {
        $crate::__conformance_scenarios! { $backend;
            scenarios::token_crud_and_isolation,
            scenarios::odd_keys,
            scenarios::scan_lists_every_key,
            scenarios::revisions_and_compare_and_swap,
            scenarios::concurrent_compare_and_swap_has_one_winner,
            scenarios::stale_invalidation_keeps_newer_token,
            scenarios::lease_is_exclusive_across_replicas,
            scenarios::lease_release,
            scenarios::lease_expires_when_holder_dies,
            scenarios::pending_insert_get_take,
            scenarios::take_exactly_once,
            scenarios::pending_expiry,
            scenarios::one_active_flow_per_key,
            scenarios::complete_wakes_waiters_across_replicas,
            scenarios::wait_times_out,
            scenarios::outcome_ttl,
            scenarios::purge_removes_expired_only,
            scenarios::huge_durations_mean_as_long_as_possible,
            lifecycle::single_flight_refresh_across_replicas,
            lifecycle::invalid_grant_leads_to_new_authorization,
            lifecycle::invalid_grant_spares_a_token_written_meanwhile,
            lifecycle::transient_refresh_failure_keeps_token,
            lifecycle::flow_completes_across_replicas,
            lifecycle::huge_durations_in_the_lifecycle,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_scenarios {
    ($backend:expr; $($module:ident :: $scenario:ident),* $(,)?) => {
        $(
            #[test]
            fn $scenario() {
                $crate::run_scenario(
                    stringify!($scenario),
                    |harness| ::std::boxed::Box::pin($crate::$module::$scenario(harness)),
                    $backend,
                    ::std::option::Option::Some(::std::concat!(
                        ::std::module_path!(),
                        "::conformance_child_entry"
                    )),
                );
            }
        )*
    };
}

/// Scenarios the backend declared it cannot run: ignored tests that carry
/// the reason, so `cargo test` lists them as not checked.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_ignored_scenarios {
    ($backend:expr; $reason:literal; $($module:ident :: $scenario:ident),* $(,)?) => {
        $(
            #[test]
            #[ignore = $reason]
            fn $scenario() {
                $crate::refuse_ignored_scenario(stringify!($scenario), $reason, $backend);
            }
        )*
    };
}

/// What an ignored scenario does when run anyway (`--ignored`): it fails
/// with the reason, since the guarantee it stands for was not checked.
#[doc(hidden)]
pub fn refuse_ignored_scenario(scenario: &str, reason: &str, backend: impl Backend) {
    panic!(
        "scenario {scenario} cannot run on backend {:?}: {reason}",
        backend.name()
    );
}

/// Fails unless `backend` declares `declared` at run time, so that what
/// the suite ignores and what the backend says of itself cannot drift apart.
#[doc(hidden)]
pub fn check_declared_capabilities(backend: impl Backend, declared: Capabilities) {
    let actual = backend.capabilities();
    assert_eq!(
        actual,
        declared,
        "backend {:?} was declared {declared:?} in conformance_tests!, but its capabilities() \
         say {actual:?}: fix the declaration, or scenarios it can run go unchecked",
        backend.name()
    );
}
