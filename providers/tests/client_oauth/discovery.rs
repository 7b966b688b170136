//! Discovery paths (RFC 9728, RFC 8414, OpenID Connect) and the bad inputs
//! a client must refuse, each with a clear error.

use mcp_authkit_providers::client::{
    AuthChallenge, AuthProvider, ClientAuthError, MetadataDocument,
};
use mcp_authkit_testkit::{
    DiscoveryDocuments, Endpoint, MetadataFault, ResourceMetadataFault, TestAuthServer,
};

use crate::support::World;

#[tokio::test]
async fn protected_resource_metadata_from_the_challenge_url() {
    let world = World::start().await;
    // The MCP server publishes its metadata only at a custom location, which
    // its challenge names; neither well-known URL answers.
    let hosted = world
        .auth
        .host_json("/custom/prm.json", world.resource.metadata_document());
    world.resource.update_settings(|s| {
        s.serve_path_metadata = false;
        s.serve_root_metadata = false;
    });
    let provider = world.provider().build().unwrap();
    let challenge = AuthChallenge::new(Some(&format!(r#"Bearer resource_metadata="{hosted}""#)));
    provider.handle_unauthorized(&challenge).await.unwrap();
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
    assert_eq!(world.auth.hits(Endpoint::HostedDocument), 1);
}

#[tokio::test]
async fn protected_resource_metadata_at_the_path_aware_well_known_url() {
    let world = World::start().await;
    world.resource.update_settings(|s| {
        s.resource_metadata_in_challenge = false;
        s.serve_root_metadata = false;
    });
    let provider = world.provider().build().unwrap();
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
    assert_eq!(provider.resource().as_deref(), Some(world.mcp_url.as_str()));
}

#[tokio::test]
async fn protected_resource_metadata_falls_back_to_the_root_well_known_url() {
    let world = World::start().await;
    world.resource.update_settings(|s| {
        s.resource_metadata_in_challenge = false;
        s.serve_path_metadata = false;
    });
    let provider = world.provider().build().unwrap();
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
}

/// The paths of the discovery requests the authorization server saw.
fn discovery_paths(world: &World) -> Vec<String> {
    world
        .auth
        .all_requests()
        .into_iter()
        .filter(|r| {
            r.is(Endpoint::AuthorizationServerMetadata) || r.is(Endpoint::OpenIdConfiguration)
        })
        .map(|r| r.path)
        .collect()
}

#[tokio::test]
async fn authorization_server_metadata_in_the_specified_order_with_path_insertion() {
    for (documents, expected) in [
        (
            DiscoveryDocuments::OAuthOnly,
            vec!["/.well-known/oauth-authorization-server/tenant1"],
        ),
        (
            DiscoveryDocuments::OpenIdOnly,
            vec![
                "/.well-known/oauth-authorization-server/tenant1",
                "/.well-known/openid-configuration/tenant1",
            ],
        ),
        (
            DiscoveryDocuments::OpenIdPathAppendedOnly,
            vec![
                "/.well-known/oauth-authorization-server/tenant1",
                "/.well-known/openid-configuration/tenant1",
                "/tenant1/.well-known/openid-configuration",
            ],
        ),
    ] {
        let world = World::with(
            TestAuthServer::builder()
                .issuer_path("/tenant1")
                .settings(|s| s.discovery = documents),
        )
        .await;
        let provider = world.provider().build().unwrap();
        assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
        assert_eq!(discovery_paths(&world), expected, "{documents:?}");
        assert_eq!(provider.issuer().as_deref(), Some(world.auth.issuer()));
    }
}

#[tokio::test]
async fn authorization_server_metadata_without_a_path_falls_back_to_openid() {
    let world = World::with(
        TestAuthServer::builder().settings(|s| s.discovery = DiscoveryDocuments::OpenIdOnly),
    )
    .await;
    let provider = world.provider().build().unwrap();
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
    assert_eq!(
        discovery_paths(&world),
        [
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration"
        ]
    );
}

/// Runs a sign-in that must fail, and checks that it failed before any
/// authorization was attempted.
async fn refused(world: &World) -> ClientAuthError {
    let provider = world.provider().build().unwrap();
    let error = world.whoami(&provider).await.unwrap_err().auth();
    assert_eq!(world.auth.hits(Endpoint::Authorize), 0, "{error}");
    assert_eq!(world.auth.hits(Endpoint::Token), 0, "{error}");
    assert!(provider.token().await.unwrap().is_none());
    assert!(!error.is_retryable(), "{error}");
    error
}

async fn with_fault(fault: MetadataFault) -> ClientAuthError {
    let world =
        World::with(TestAuthServer::builder().settings(|s| s.metadata_fault = Some(fault))).await;
    refused(&world).await
}

#[tokio::test]
async fn malformed_authorization_server_metadata_is_refused() {
    let error = with_fault(MetadataFault::MalformedJson).await;
    assert!(
        matches!(
            &error,
            ClientAuthError::Metadata { document: MetadataDocument::AuthorizationServer, reason, .. }
                if reason.contains("not valid JSON")
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_issuer_mismatch_is_refused() {
    let error = with_fault(MetadataFault::WrongIssuer).await;
    let ClientAuthError::IssuerMismatch {
        expected, found, ..
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!(found, mcp_authkit_testkit::WRONG_ISSUER);
    assert!(error.to_string().contains("RFC 8414"), "{error}");
    assert!(!expected.is_empty());
}

#[tokio::test]
async fn a_server_without_s256_is_refused() {
    for fault in [
        MetadataFault::NoCodeChallengeMethods,
        MetadataFault::PlainPkceOnly,
    ] {
        let error = with_fault(fault).await;
        assert!(
            matches!(&error, ClientAuthError::PkceUnsupported { .. }),
            "{fault:?}: {error:?}"
        );
        assert!(error.to_string().contains("S256"), "{error}");
    }
}

#[tokio::test]
async fn a_redirect_to_another_origin_is_refused() {
    let world = World::with(
        TestAuthServer::builder()
            .settings(|s| s.metadata_fault = Some(MetadataFault::CrossOriginRedirect)),
    )
    .await;
    let error = refused(&world).await;
    let ClientAuthError::CrossOriginRedirect { location, .. } = &error else {
        panic!("{error:?}");
    };
    assert!(error.to_string().contains("cross-origin"), "{error}");
    // The other origin serves valid metadata: it was never fetched.
    let other = world
        .auth
        .other_origin()
        .as_str()
        .trim_end_matches('/')
        .to_owned();
    assert!(location.starts_with(&other), "{location}");
    assert!(
        world
            .auth
            .all_requests()
            .iter()
            .filter(|r| r.is(Endpoint::AuthorizationServerMetadata))
            .count()
            == 1
    );
}

#[tokio::test]
async fn a_resource_mismatch_is_refused() {
    let world = World::start().await;
    world
        .resource
        .update_settings(|s| s.metadata_fault = Some(ResourceMetadataFault::WrongResource));
    let error = refused(&world).await;
    let ClientAuthError::ResourceMismatch {
        server, advertised, ..
    } = &error
    else {
        panic!("{error:?}");
    };
    assert_eq!(server, &world.mcp_url);
    assert!(advertised.ends_with("-elsewhere"));
}

#[tokio::test]
async fn malformed_protected_resource_metadata_is_refused() {
    for (fault, words) in [
        (ResourceMetadataFault::MalformedJson, "not valid JSON"),
        (
            ResourceMetadataFault::NoAuthorizationServers,
            "no authorization_servers",
        ),
    ] {
        let world = World::start().await;
        world
            .resource
            .update_settings(|s| s.metadata_fault = Some(fault));
        let error = refused(&world).await;
        assert!(
            matches!(
                &error,
                ClientAuthError::Metadata { document: MetadataDocument::ProtectedResource, reason, .. }
                    if reason.contains(words)
            ),
            "{fault:?}: {error:?}"
        );
    }
}

#[tokio::test]
async fn missing_metadata_is_a_clear_error() {
    let world =
        World::with(TestAuthServer::builder().settings(|s| s.discovery = DiscoveryDocuments::None))
            .await;
    let error = refused(&world).await;
    assert!(
        error
            .to_string()
            .contains("no RFC 8414 or OpenID Connect discovery document"),
        "{error}"
    );

    let world = World::start().await;
    world.resource.update_settings(|s| {
        s.serve_path_metadata = false;
        s.serve_root_metadata = false;
    });
    let error = refused(&world).await;
    assert!(
        error
            .to_string()
            .contains("publishes no Protected Resource Metadata"),
        "{error}"
    );
}

#[tokio::test]
async fn a_remote_server_cannot_send_the_client_to_plain_http_on_loopback() {
    // A remote MCP server (https) whose challenge points at a plain-HTTP
    // service on the user's machine (here, the test server's metadata):
    // not one request goes there.
    let world = World::start().await;
    let provider =
        mcp_authkit_providers::client::OAuthClientProvider::builder("https://mcp.example/mcp")
            .store(world.store.clone())
            .build()
            .unwrap();
    let local = world.auth.metadata_url();
    let challenge = AuthChallenge::new(Some(&format!(r#"Bearer resource_metadata="{local}""#)));
    let error = provider.handle_unauthorized(&challenge).await.unwrap_err();
    assert!(
        matches!(&error, ClientAuthError::InsecureUrl { url, .. } if url == local.as_str()),
        "{error:?}"
    );
    assert!(
        world.auth.all_requests().is_empty(),
        "no request reached it"
    );

    // Allowed for development, explicitly.
    let lax =
        mcp_authkit_providers::client::OAuthClientProvider::builder("https://mcp.example/mcp")
            .store(world.store.clone())
            .allow_insecure_http(true)
            .build()
            .unwrap();
    let _ = lax.handle_unauthorized(&challenge).await;
    assert_eq!(world.auth.hits(Endpoint::AuthorizationServerMetadata), 1);
}
