//! The MCP client's metrics through real sign-ins on loopback (the testkit's
//! authorization server, an rmcp MCP server behind a protected resource,
//! the client's loopback redirect listener and the testkit's headless
//! browser), read back through core's per-thread debugging recorder
//! (`testing::recording`). Each test installs its recorder before building
//! the provider and runs everything on its one `#[tokio::test]` thread, so
//! tests of this binary, which run on parallel threads, never see each
//! other's counts.
//!
//! The client's lifecycles are keyed `{namespace}:{issuer}` but report
//! under their namespace alone: no label may carry the issuer or any other
//! URL, nor a subject, a state, a code or a token.
//!
//! Run: `cargo test -p mcp-authkit-providers --features metrics --test client_metrics`

#![cfg(feature = "metrics")]

#[path = "client_oauth/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mcp_authkit_core::observe::names;
use mcp_authkit_core::testing::recording::{Metrics, Recording};
use mcp_authkit_core::{ExposeSecret, ManualClock, TokenStore};
use mcp_authkit_providers::client::{AuthProvider, ClientAuthError, PromptOutcome, prompt_fn};
use mcp_authkit_testkit::{Browser, Endpoint};

use support::{World, secret};

/// The namespace the providers of these tests store and report under.
const NAMESPACE: &str = "notes-app";

fn expect(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// Every `provider` label is the namespace, every `backend` the memory
/// store's, and no label value holds any of `forbidden`.
fn assert_labels_are_namespace_backend_or_fixed(m: &Metrics, forbidden: &[String]) {
    let labels = m.label_values();
    for label in &labels {
        for secret in forbidden {
            assert!(
                !label.contains(secret.as_str()),
                "{secret:?} in label {label:?}"
            );
        }
    }
    assert!(
        labels.iter().any(|v| v == NAMESPACE),
        "the namespace labels the events: {labels:?}"
    );
    let ids = m
        .counters
        .keys()
        .chain(m.gauges.keys())
        .chain(m.samples.keys());
    for (name, pairs) in ids {
        for (key, value) in pairs {
            match key.as_str() {
                "provider" => assert_eq!(value, NAMESPACE, "{name}"),
                "backend" => assert_eq!(value, "memory", "{name}"),
                // `outcome`, `result`, `operation`...: `&'static str` by type.
                _ => {}
            }
        }
    }
}

/// A sign-in through the loopback listener and a browser: one flow
/// started and completed under the namespace, the store operations of
/// that one flow, and no URL, issuer, subject, state, code or token in a
/// label or a span field of ours.
#[tokio::test]
async fn a_sign_in_counts_one_flow_under_the_namespace_and_leaks_nothing_into_labels() {
    let mut rec = Recording::start();
    let world = World::start().await;
    let provider = world
        .provider()
        .namespace(NAMESPACE)
        .interaction(prompt_fn(|prompt| async move {
            // The user's browser follows the authorization server's
            // redirect to the client's loopback listener.
            Browser::new()
                .with_user("alice")
                .get(prompt.url.as_str())
                .await
                .map_err(|e| ClientAuthError::Interaction(e.to_string()))?;
            Ok(PromptOutcome::AwaitRedirect)
        }))
        .build()
        .unwrap();
    assert_eq!(world.whoami(&provider).await.unwrap(), "alice []");

    let m = rec.metrics();
    let signed_in = expect(&[
        ("flows_started_total{}", 1),
        ("flows_completed_total{outcome=authorized}", 1),
    ]);
    assert_eq!(m.events(), signed_in, "{m:#?}");
    // The lifecycle's store operations for one sign-in: the flow inserted,
    // looked up and taken by its callback, then completed; the new token
    // written once.
    for (operation, n) in [
        ("insert", 1),
        ("get_flow", 1),
        ("take", 1),
        ("complete", 1),
        ("put", 1),
    ] {
        assert_eq!(m.store_ops("memory", operation), n, "{operation}: {m:#?}");
    }
    assert_eq!(m.total(names::STORE_ERRORS), 0);

    // Signed in: the next call needs no flow and counts no event.
    assert_eq!(world.whoami(&provider).await.unwrap(), "alice []");
    assert_eq!(rec.metrics().events(), signed_in);

    let authorize = world.auth.last_request(Endpoint::Authorize).unwrap();
    let exchange = world
        .auth
        .last_request(Endpoint::AuthorizationCodeGrant)
        .unwrap();
    let token = provider.token().await.unwrap().unwrap();
    let stored = TokenStore::get(&world.store, &provider.token_key().unwrap())
        .await
        .unwrap()
        .unwrap();
    let forbidden = vec![
        world.auth.issuer().to_owned(),
        world.mcp_url.clone(),
        "http://".to_owned(),
        "https://".to_owned(),
        "127.0.0.1".to_owned(),
        "alice".to_owned(),
        authorize.param("state").unwrap().to_owned(),
        exchange.param("code").unwrap().to_owned(),
        authorize.param("client_id").unwrap().to_owned(),
        secret(&token),
        stored
            .record
            .refresh_token
            .as_ref()
            .expect("a refresh token")
            .expose_secret()
            .to_owned(),
    ];
    let m = rec.metrics();
    assert_labels_are_namespace_backend_or_fixed(&m, &forbidden);
    let fields = rec.spans().fields();
    assert!(
        fields.iter().any(|(span, field, value)| span == "callback"
            && field == "provider"
            && value.contains(NAMESPACE)),
        "the callback span names the namespace: {fields:?}"
    );
    for secret in &forbidden {
        for (span, field, value) in &fields {
            assert!(
                !value.contains(secret.as_str()),
                "{secret:?} in span {span} field {field}: {value}"
            );
        }
    }
    assert_eq!(
        m.counter(
            names::FLOWS_COMPLETED,
            &[("provider", NAMESPACE), ("outcome", "authorized")]
        ),
        1
    );
    assert_eq!(
        m.gauge(names::FLOWS_PENDING, &[("provider", NAMESPACE)]),
        0.0
    );
}

/// Refreshes through the client count under the namespace: one ahead of
/// expiry, then one the authorization server refuses (`invalid_grant`,
/// the user disconnected the app), which leads to a second sign-in.
#[tokio::test]
async fn refreshes_through_the_client_count_refreshed_then_invalid_grant_and_a_new_flow() {
    let mut rec = Recording::start();
    let world = World::start().await;
    let clock = Arc::new(ManualClock::starting_now());
    let provider = world
        .provider()
        .namespace(NAMESPACE)
        .clock(clock.clone())
        .refresh_skew(Duration::from_secs(60))
        .build()
        .unwrap();
    let forbidden = vec![
        world.auth.issuer().to_owned(),
        world.mcp_url.clone(),
        "http://".to_owned(),
        "test-user".to_owned(),
    ];
    world.whoami(&provider).await.unwrap();

    // 3550 s of a 3600 s token have passed: inside the 60 s skew.
    clock.advance(Duration::from_secs(3550));
    provider.token().await.unwrap().unwrap();
    assert_eq!(world.auth.hits(Endpoint::RefreshTokenGrant), 1);
    let m = rec.metrics();
    assert_eq!(
        m.events(),
        expect(&[
            ("flows_started_total{}", 1),
            ("flows_completed_total{outcome=authorized}", 1),
            ("refreshes_total{result=refreshed}", 1),
        ]),
        "{m:#?}"
    );
    assert_labels_are_namespace_backend_or_fixed(&m, &forbidden);
    assert_eq!(
        m.samples(names::REFRESH_DURATION, &[("provider", NAMESPACE)]),
        1
    );

    // The user disconnected the app: the next call's 401 makes the client
    // refresh, the server refuses, and the user signs in again.
    world.auth.revoke_subject("test-user");
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
    assert_eq!(world.auth.hits(Endpoint::RefreshTokenGrant), 2);
    assert_eq!(world.auth.hits(Endpoint::Authorize), 2);
    let m = rec.metrics();
    assert_eq!(
        m.events(),
        expect(&[
            ("flows_started_total{}", 2),
            ("flows_completed_total{outcome=authorized}", 2),
            ("refreshes_total{result=refreshed}", 1),
            ("refreshes_total{result=invalid_grant}", 1),
        ]),
        "{m:#?}"
    );
    assert_labels_are_namespace_backend_or_fixed(&m, &forbidden);
    assert_eq!(
        m.samples(names::REFRESH_DURATION, &[("provider", NAMESPACE)]),
        2
    );
}

/// A sign-in the user never finishes: the client gives up waiting for the
/// browser's redirect (one timed-out wait) and drops the flow it showed
/// (its one end, `abandoned`), so the next request does not join it.
#[tokio::test]
async fn a_sign_in_the_user_never_finishes_counts_one_timed_out_wait_and_one_abandoned_flow() {
    let mut rec = Recording::start();
    let world = World::start().await;
    let walked_away = world
        .provider()
        .namespace(NAMESPACE)
        .interaction(prompt_fn(|_| async { Ok(PromptOutcome::AwaitRedirect) }))
        .authorization_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let error = world.whoami(&walked_away).await.unwrap_err().auth();
    assert!(
        matches!(error, ClientAuthError::TimedOut { .. }),
        "{error:?}"
    );
    let m = rec.metrics();
    assert_eq!(
        m.events(),
        expect(&[
            ("flows_started_total{}", 1),
            ("waits_given_up_total{reason=timed_out}", 1),
            ("flows_completed_total{outcome=abandoned}", 1),
        ]),
        "{m:#?}"
    );
    assert_labels_are_namespace_backend_or_fixed(
        &m,
        &[world.auth.issuer().to_owned(), "http://".to_owned()],
    );
    assert_eq!(
        m.gauge(names::FLOWS_PENDING, &[("provider", NAMESPACE)]),
        0.0
    );
}

/// A request that joins another request's
/// sign-in and gives up waiting counts one timed-out wait; the sign-in
/// that finishes later is the flow's one completion.
#[tokio::test]
async fn a_joined_request_that_gives_up_counts_one_timed_out_wait() {
    let mut rec = Recording::start();
    let world = World::start().await;
    let (provider, entered, release) = held_sign_in(&world, Duration::from_millis(300));
    let shows = world.whoami(&provider);
    let joins = async {
        entered.notified().await;
        let joined = world.whoami(&provider).await;
        release.notify_one();
        joined
    };
    let (shown, joined) = tokio::join!(shows, joins);
    assert_eq!(shown.unwrap(), "alice []");
    let error = joined.unwrap_err().auth();
    assert!(
        matches!(error, ClientAuthError::TimedOut { .. }),
        "{error:?}"
    );
    assert_eq!(
        rec.metrics().events(),
        expect(&[
            ("flows_started_total{}", 1),
            ("flows_joined_total{}", 1),
            ("waits_given_up_total{reason=timed_out}", 1),
            ("flows_completed_total{outcome=authorized}", 1),
        ])
    );
}

/// A provider whose sign-in is held at its prompt: the interaction hook
/// says it was `entered` and finishes alice's sign-in in the browser only
/// once `release`d, so a second request can join it meanwhile.
fn held_sign_in(
    world: &World,
    timeout: Duration,
) -> (
    mcp_authkit_providers::client::OAuthClientProvider,
    Arc<tokio::sync::Notify>,
    Arc<tokio::sync::Notify>,
) {
    let entered = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (e, r) = (entered.clone(), release.clone());
    let provider = world
        .provider()
        .namespace(NAMESPACE)
        .authorization_timeout(timeout)
        .interaction(prompt_fn(move |prompt| {
            let (e, r) = (e.clone(), r.clone());
            async move {
                e.notify_one();
                r.notified().await;
                Browser::new()
                    .with_user("alice")
                    .get(prompt.url.as_str())
                    .await
                    .map_err(|e| ClientAuthError::Interaction(e.to_string()))?;
                Ok(PromptOutcome::AwaitRedirect)
            }
        }))
        .build()
        .unwrap();
    (provider, entered, release)
}

/// Polls the event counters until they are `expected` (a dropped
/// request's flow is ended by a spawned task); the deadline only keeps a
/// broken build from hanging.
async fn settles_to(rec: &mut Recording, expected: &BTreeMap<String, u64>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rec.metrics().events() != *expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rec.metrics().events(), *expected);
}

/// The caller drops the request while the client waits for the browser's
/// redirect (its own request timeout is shorter than the authorization
/// timeout): one cancelled wait, and the flow it showed ends, `abandoned`
/// (red when a dropped wait counts nothing).
#[tokio::test]
async fn a_request_dropped_while_waiting_for_the_redirect_counts_one_cancelled_wait() {
    let mut rec = Recording::start();
    let world = World::start().await;
    let shown = Arc::new(tokio::sync::Notify::new());
    let notify = shown.clone();
    let provider = world
        .provider()
        .namespace(NAMESPACE)
        .authorization_timeout(Duration::from_secs(30))
        .interaction(prompt_fn(move |_| {
            let notify = notify.clone();
            async move {
                notify.notify_one();
                Ok(PromptOutcome::AwaitRedirect)
            }
        }))
        .build()
        .unwrap();
    // The hook returns at once, so by the time the notice is seen the
    // request waits for the redirect: dropping it there is the give-up.
    tokio::select! {
        _ = world.whoami(&provider) => panic!("nobody signs in"),
        () = shown.notified() => {}
    }
    settles_to(
        &mut rec,
        &expect(&[
            ("flows_started_total{}", 1),
            ("waits_given_up_total{reason=cancelled}", 1),
            ("flows_completed_total{outcome=abandoned}", 1),
        ]),
    )
    .await;
}

/// The caller drops the request while the interaction hook itself waits
/// for the user (a hook that shows the link and awaits the redirect on
/// its own, and never returns here): the same give-up as at the loopback
/// listener, one cancelled wait, and the flow ends `abandoned` (red when
/// only the loopback wait counts a dropped request).
#[tokio::test]
async fn a_request_dropped_while_the_interaction_hook_waits_counts_one_cancelled_wait() {
    let mut rec = Recording::start();
    let world = World::start().await;
    let shown = Arc::new(tokio::sync::Notify::new());
    let notify = shown.clone();
    let provider = world
        .provider()
        .namespace(NAMESPACE)
        .authorization_timeout(Duration::from_secs(30))
        .interaction(prompt_fn(move |_| {
            let notify = notify.clone();
            async move {
                notify.notify_one();
                std::future::pending::<Result<PromptOutcome, ClientAuthError>>().await
            }
        }))
        .build()
        .unwrap();
    tokio::select! {
        _ = world.whoami(&provider) => panic!("nobody signs in"),
        () = shown.notified() => {}
    }
    settles_to(
        &mut rec,
        &expect(&[
            ("flows_started_total{}", 1),
            ("waits_given_up_total{reason=cancelled}", 1),
            ("flows_completed_total{outcome=abandoned}", 1),
        ]),
    )
    .await;
}

/// An interaction hook that fails (it could not show the link) is no
/// request giving up: the error is the request's answer, the flow ends
/// `abandoned`, and no give-up is counted (red when the hook's wait
/// counts its error as a cancellation).
#[tokio::test]
async fn a_failing_interaction_hook_counts_no_give_up() {
    let mut rec = Recording::start();
    let world = World::start().await;
    let provider = world
        .provider()
        .namespace(NAMESPACE)
        .interaction(prompt_fn(|_| async {
            Err(ClientAuthError::Interaction("no browser".to_owned()))
        }))
        .build()
        .unwrap();
    assert!(world.whoami(&provider).await.is_err());
    assert_eq!(
        rec.metrics().events(),
        expect(&[
            ("flows_started_total{}", 1),
            ("flows_completed_total{outcome=abandoned}", 1),
        ])
    );
}

/// A request that joined another request's sign-in is dropped while it
/// waits: one cancelled wait, and the sign-in goes on to its one
/// completion (red when a dropped joined wait counts nothing).
#[tokio::test]
async fn a_joined_request_dropped_while_waiting_counts_one_cancelled_wait() {
    let mut rec = Recording::start();
    let world = World::start().await;
    let (provider, entered, release) = held_sign_in(&world, Duration::from_secs(30));
    let shows = world.whoami(&provider);
    let joins = async {
        entered.notified().await;
        let mut joiner = Box::pin(world.whoami(&provider));
        // Drive the joining request until it joined (then it waits).
        while !rec.metrics().events().contains_key("flows_joined_total{}") {
            tokio::select! {
                _ = &mut joiner => panic!("the joined sign-in is not done"),
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        drop(joiner);
        release.notify_one();
    };
    let (shown, ()) = tokio::join!(shows, joins);
    assert_eq!(shown.unwrap(), "alice []");
    assert_eq!(
        rec.metrics().events(),
        expect(&[
            ("flows_started_total{}", 1),
            ("flows_joined_total{}", 1),
            ("waits_given_up_total{reason=cancelled}", 1),
            ("flows_completed_total{outcome=authorized}", 1),
        ])
    );
}
