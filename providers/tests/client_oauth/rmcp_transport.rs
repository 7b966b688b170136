//! The rmcp streamable-HTTP transport with an `AuthProvider`: the bearer on
//! every request, 401 -> one retry, 403 -> bounded step-ups.

use mcp_authkit_providers::client::StaticProvider;
use mcp_authkit_providers::client::transport::AuthorizedHttpClient;
use mcp_authkit_testkit::{Endpoint, ResourceEvent};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;

use crate::support::World;

fn transport(
    world: &World,
    provider: impl mcp_authkit_providers::client::AuthProvider,
) -> StreamableHttpClientTransport<AuthorizedHttpClient<reqwest::Client>> {
    StreamableHttpClientTransport::with_client(
        AuthorizedHttpClient::new(reqwest::Client::new(), provider),
        StreamableHttpClientTransportConfig::with_uri(world.mcp_url.as_str()),
    )
}

async fn whoami(client: &RunningService<RoleClient, ()>) -> String {
    let result = client
        .call_tool(CallToolRequestParams::new("whoami"))
        .await
        .expect("the tool call succeeds");
    result.content[0].as_text().expect("text").text.clone()
}

#[tokio::test]
async fn an_rmcp_client_signs_in_refreshes_and_steps_up() {
    let world = World::start().await;
    world
        .resource
        .update_settings(|s| s.required_scopes = vec!["notes:read".into()]);
    let provider = world.provider().build().unwrap();
    let client = ().serve(transport(&world, provider)).await.expect("connected");

    let tools = client.list_all_tools().await.unwrap();
    assert_eq!(tools[0].name, "whoami");
    assert_eq!(whoami(&client).await, "test-user [notes:read]");
    assert_eq!(world.auth.hits(Endpoint::Authorize), 1);
    assert_eq!(
        world.resource.hits(ResourceEvent::Unauthorized),
        1,
        "only the first request"
    );

    // The token dies at the server: the next request refreshes and retries,
    // without discovering again.
    let metadata_fetches = world.resource.hits(ResourceEvent::Metadata);
    world.auth.expire_access_tokens();
    assert_eq!(whoami(&client).await, "test-user [notes:read]");
    assert_eq!(world.auth.hits(Endpoint::RefreshTokenGrant), 1);
    assert_eq!(
        world.resource.hits(ResourceEvent::Metadata),
        metadata_fetches
    );

    // An operation needs more scopes: 403 -> step up -> retry.
    world
        .resource
        .update_settings(|s| s.required_scopes = vec!["notes:write".into()]);
    assert_eq!(whoami(&client).await, "test-user [notes:read notes:write]");
    assert_eq!(world.auth.hits(Endpoint::Authorize), 2);
    assert_eq!(world.resource.hits(ResourceEvent::Forbidden), 1);

    client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_static_token_is_sent_and_a_refusal_is_final() {
    let world = World::start().await;
    let error =
        ().serve(transport(&world, StaticProvider::new("not-a-valid-token")))
            .await
            .expect_err("the server refuses the token");
    let printed = format!("{error:?}");
    assert!(printed.contains("Refused"), "{printed}");
    assert!(!printed.contains("not-a-valid-token"), "{printed}");
    assert_eq!(
        world.resource.hits(ResourceEvent::Unauthorized),
        1,
        "never retried"
    );
    assert_eq!(world.resource.hits(ResourceEvent::Authorized), 0);
}

#[tokio::test]
async fn the_transport_bounds_step_ups_per_request() {
    // The user never grants the write scope the server requires.
    let world = World::with(
        mcp_authkit_testkit::TestAuthServer::builder().settings(|s| {
            s.grant_only = Some(vec!["notes:read".into()]);
        }),
    )
    .await;
    world
        .resource
        .update_settings(|s| s.required_scopes = vec!["notes:read".into()]);
    let provider = world.provider().build().unwrap();
    let client = ()
        .serve(StreamableHttpClientTransport::with_client(
            AuthorizedHttpClient::new(reqwest::Client::new(), provider).max_step_ups(1),
            StreamableHttpClientTransportConfig::with_uri(world.mcp_url.as_str()),
        ))
        .await
        .expect("connected with notes:read");

    world.resource.update_settings(|s| {
        s.required_scopes = vec!["notes:read".into(), "notes:write".into()];
    });
    let error = client
        .call_tool(CallToolRequestParams::new("whoami"))
        .await
        .expect_err("still forbidden");
    assert!(format!("{error:?}").contains("Insufficient"), "{error:?}");
    // The sign-in, then exactly one step-up, also when the SSE stream's GET
    // was refused at the same time as the tool call.
    assert_eq!(world.auth.hits(Endpoint::Authorize), 2);
    let forbidden = world.resource.hits(ResourceEvent::Forbidden);
    assert!((2..=4).contains(&forbidden), "{forbidden} refusals");
}
