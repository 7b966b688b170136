//! The smallest end-to-end run of the token lifecycle: no credentials, no
//! services. An in-memory store, and the in-process fake authorization
//! server of `mcp_authkit_core::testing` in place of GitHub.
//!
//! Run it with `cargo run -p mcp-authkit-examples --bin quickstart`.

use std::sync::Arc;
use std::time::Duration;

use mcp_authkit::memory::MemoryStore;
use mcp_authkit::{
    Access, BeginOutcome, CallbackParams, Clock, FlowOutcome, FlowRequest, LifecycleConfig,
    ManualClock, TokenLifecycle,
};
use mcp_authkit_core::testing::{FakeOAuthClient, RefreshBehavior};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = MemoryStore::new();
    let oauth = Arc::new(FakeOAuthClient::new());
    // A manual clock lets the example jump an hour ahead instead of waiting.
    let clock = Arc::new(ManualClock::starting_now());
    let github = TokenLifecycle::builder(
        "github",
        oauth.clone(),
        Arc::new(store.clone()),
        Arc::new(store.clone()),
    )
    .clock(clock.clone())
    .config(LifecycleConfig::new(
        "http://127.0.0.1:8005/github/callback",
        vec!["repo".into()],
    ))
    .build()?;
    let user = "user-42";

    println!("1. first tool call for {user}");
    let Access::NeedsAuthorization(reason) = github.access(user).await? else {
        return Err("a new user has no token".into());
    };
    println!("   no token ({reason:?}): starting an authorization flow");
    let BeginOutcome::Started(flow) = github
        .begin_authorization(user, FlowRequest::default())
        .await?
    else {
        return Err("no other flow is running".into());
    };
    let url = github.authorization_url(&flow)?;
    println!(
        "   the user is sent to {}?…",
        url.as_str().split('?').next().unwrap_or_default()
    );

    println!("2. a concurrent call for the same user joins the same flow");
    let joined = github
        .begin_authorization(user, FlowRequest::default())
        .await?;
    println!("   joined: {}", matches!(joined, BeginOutcome::Joined(_)));

    println!("3. the user consents; the callback arrives");
    let waiter = {
        let github = github.clone();
        let state = flow.state.clone();
        tokio::spawn(async move { github.wait(&state, Duration::from_secs(10)).await })
    };
    let code = oauth.approve(&url);
    let completed = github
        .complete_authorization(CallbackParams::success(flow.state.clone(), code))
        .await?;
    println!("   flow completed: {:?}", completed.outcome);
    let woke = waiter.await??;
    println!("   the waiting tool call woke with: {woke:?}");

    println!("4. next call: the token is served from the store");
    let Access::Ready(token) = github.access(user).await? else {
        return Err("token expected".into());
    };
    println!("   token {token:?}");

    println!("5. an hour later the token is about to expire: silent refresh");
    clock.advance(Duration::from_secs(3570));
    let Access::Ready(refreshed) = github.access(user).await? else {
        return Err("refreshed token expected".into());
    };
    println!(
        "   refreshed: revision {} -> {}, {} refresh call(s)",
        token.revision(),
        refreshed.revision(),
        oauth.refresh_calls()
    );

    println!("6. the API answers 401: invalidate that revision");
    github.invalidate(user, Some(refreshed.revision())).await?;
    let next = github.access(user).await?;
    println!("   next access: {next:?}");

    println!("7. a revoked refresh token (invalid_grant) also leads to a new authorization");
    let BeginOutcome::Started(flow) = github
        .begin_authorization(user, FlowRequest::default())
        .await?
    else {
        return Err("no other flow is running".into());
    };
    let code = oauth.approve(&github.authorization_url(&flow)?);
    let completed = github
        .complete_authorization(CallbackParams::success(flow.state.clone(), code))
        .await?;
    assert!(matches!(completed.outcome, FlowOutcome::Authorized { .. }));
    oauth.set_refresh_behavior(RefreshBehavior::InvalidGrant);
    clock.advance(Duration::from_secs(3570));
    println!("   access: {:?}", github.access(user).await?);
    println!("done at {}", clock.now());
    Ok(())
}
