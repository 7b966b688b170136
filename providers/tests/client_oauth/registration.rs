//! Client identity: pre-registered, Client ID Metadata Document, dynamic
//! registration (stored and reused), and the token endpoint authentication
//! method the server advertises.

use std::time::Duration;

use mcp_authkit_providers::client::{
    ClientAuthError, ClientMetadata, LoopbackRedirect, PreRegisteredClient, RedirectTarget, SignOut,
};
use mcp_authkit_testkit::{
    ClientAuthMethod, ClientRegistration, ClientSource, Endpoint, TestAuthServer,
};

use crate::support::World;

/// A server that knows only the clients the test registers.
fn closed_server() -> mcp_authkit_testkit::TestAuthServerBuilder {
    TestAuthServer::builder().settings(|s| {
        s.dynamic_registration = false;
        s.client_id_metadata_documents = false;
        s.loopback_redirect_any_port = true;
    })
}

#[tokio::test]
async fn a_pre_registered_client_authenticates_as_the_server_advertises() {
    for (advertised, method) in [
        (ClientAuthMethod::ClientSecretBasic, "basic"),
        (ClientAuthMethod::ClientSecretPost, "post"),
        (ClientAuthMethod::None, "none"),
    ] {
        let world = World::with(
            closed_server()
                .settings(|s| s.token_endpoint_auth_methods = vec![advertised])
                .client(
                    ClientRegistration::public("http://127.0.0.1:1/callback")
                        .auth_method(advertised)
                        .client_id("pre-registered")
                        .client_secret("pre-secret"),
                ),
        )
        .await;
        let client = match advertised {
            ClientAuthMethod::None => PreRegisteredClient::public("pre-registered"),
            _ => PreRegisteredClient::confidential("pre-registered", "pre-secret"),
        };
        let provider = world.provider().pre_registered(client).build().unwrap();
        assert_eq!(
            world.whoami(&provider).await.unwrap(),
            "test-user []",
            "{method}"
        );

        let exchange = world.auth.last_request(Endpoint::Token).unwrap();
        let basic = exchange
            .header("authorization")
            .is_some_and(|h| h.starts_with("Basic "));
        let in_body = exchange.param("client_secret") == Some("pre-secret");
        assert_eq!(
            (basic, in_body),
            match method {
                "basic" => (true, false),
                "post" => (false, true),
                _ => (false, false),
            },
            "{method}"
        );
        assert_eq!(world.auth.hits(Endpoint::Registration), 0);
    }
}

#[tokio::test]
async fn a_client_metadata_document_when_the_server_accepts_them() {
    let world = World::start().await;
    let url = format!("{}oauth/client.json", world.auth.other_origin());
    let redirect = "http://127.0.0.1:1/callback";
    world.auth.host_json(
        "/oauth/client.json",
        ClientMetadata::new("Notes CLI").metadata_document(&url, &[redirect]),
    );
    let provider = world
        .provider()
        .client_metadata_document(&url)
        .redirect(RedirectTarget::External(redirect.into()))
        .build()
        .unwrap();
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");

    assert_eq!(world.auth.hits(Endpoint::Registration), 0);
    assert!(world.auth.client_metadata_fetches() >= 1);
    let authorize = world.auth.last_request(Endpoint::Authorize).unwrap();
    assert_eq!(authorize.param("client_id"), Some(url.as_str()));
    let client = world.auth.client(&url).unwrap();
    assert_eq!(client.source, ClientSource::MetadataDocument);
    let exchange = world.auth.last_request(Endpoint::Token).unwrap();
    assert_eq!(exchange.param("client_id"), Some(url.as_str()));
    assert!(exchange.header("authorization").is_none());
}

#[tokio::test]
async fn dynamic_registration_when_metadata_documents_are_not_accepted() {
    let world =
        World::with(TestAuthServer::builder().settings(|s| s.client_id_metadata_documents = false))
            .await;
    let url = format!("{}oauth/client.json", world.auth.other_origin());
    let provider = world
        .provider()
        .client_metadata_document(&url)
        .client_metadata(ClientMetadata::new("Notes CLI"))
        .build()
        .unwrap();
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
    assert_eq!(world.auth.hits(Endpoint::Registration), 1);
    let registration = world.auth.last_request(Endpoint::Registration).unwrap();
    let body = registration.json.unwrap();
    assert_eq!(body["client_name"], "Notes CLI");
    assert_eq!(body["token_endpoint_auth_method"], "none");
    let authorize = world.auth.last_request(Endpoint::Authorize).unwrap();
    assert_ne!(authorize.param("client_id"), Some(url.as_str()));
}

#[tokio::test]
async fn a_registration_is_stored_and_reused_across_restarts() {
    let world = World::start().await;
    let redirect = RedirectTarget::External("http://127.0.0.1:1/callback".into());
    let first = world.provider().redirect(redirect.clone()).build().unwrap();
    world.whoami(&first).await.unwrap();
    let client_id = world
        .auth
        .last_request(Endpoint::Authorize)
        .unwrap()
        .param("client_id")
        .unwrap()
        .to_owned();
    drop(first);

    // A restarted client that has to sign in again (signed out) reuses it.
    let restarted = world.provider().redirect(redirect).build().unwrap();
    world.whoami(&restarted).await.unwrap();
    assert!(
        restarted
            .sign_out(SignOut::KeepRegistration)
            .await
            .unwrap()
            .removed
    );
    world.whoami(&restarted).await.unwrap();
    assert_eq!(world.auth.hits(Endpoint::Authorize), 2);
    assert_eq!(world.auth.hits(Endpoint::Registration), 1);
    let again = world.auth.last_request(Endpoint::Authorize).unwrap();
    assert_eq!(again.param("client_id"), Some(client_id.as_str()));

    // Another redirect URI is not covered by the stored registration.
    let moved = world
        .provider()
        .redirect(RedirectTarget::External("http://127.0.0.1:2/cb".into()))
        .build()
        .unwrap();
    moved.sign_out(SignOut::KeepRegistration).await.unwrap();
    world.whoami(&moved).await.unwrap();
    assert_eq!(world.auth.hits(Endpoint::Registration), 2);
}

#[tokio::test]
async fn the_loopback_listener_comes_back_on_the_registered_port() {
    let world = World::start().await;
    let first = world.provider().build().unwrap();
    world.whoami(&first).await.unwrap();
    let redirect = world
        .auth
        .last_request(Endpoint::Authorize)
        .unwrap()
        .param("redirect_uri")
        .unwrap()
        .to_owned();
    let port = url::Url::parse(&redirect).unwrap().port().unwrap();
    drop(first);
    // The listener closes asynchronously; wait until its port is free.
    for _ in 0..200 {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let restarted = world.provider().build().unwrap();
    restarted.sign_out(SignOut::KeepRegistration).await.unwrap();
    world.whoami(&restarted).await.unwrap();
    let again = world.auth.last_request(Endpoint::Authorize).unwrap();
    assert_eq!(again.param("redirect_uri"), Some(redirect.as_str()));
    assert_eq!(world.auth.hits(Endpoint::Registration), 1);
}

#[tokio::test]
async fn dynamic_registration_uses_the_secret_method_the_server_requires() {
    let world = World::with(TestAuthServer::builder().settings(|s| {
        s.token_endpoint_auth_methods = vec![ClientAuthMethod::ClientSecretPost];
    }))
    .await;
    let provider = world.provider().build().unwrap();
    assert_eq!(world.whoami(&provider).await.unwrap(), "test-user []");
    let registration = world.auth.last_request(Endpoint::Registration).unwrap();
    assert_eq!(
        registration.json.unwrap()["token_endpoint_auth_method"],
        "client_secret_post"
    );
    let exchange = world.auth.last_request(Endpoint::Token).unwrap();
    assert!(exchange.param("client_secret").is_some());
}

#[tokio::test]
async fn no_client_identity_is_a_clear_error() {
    let world = World::with(closed_server()).await;
    let provider = world.provider().build().unwrap();
    let error = world.whoami(&provider).await.unwrap_err().auth();
    assert!(
        matches!(&error, ClientAuthError::NoClientIdentity { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("configure its client_id"),
        "{error}"
    );
    assert_eq!(world.auth.hits(Endpoint::Authorize), 0);
}

#[tokio::test]
async fn the_listener_path_is_configurable() {
    let world = World::with(
        closed_server()
            .client(ClientRegistration::public("http://127.0.0.1:1/done").client_id("fixed")),
    )
    .await;
    let provider = world
        .provider()
        .pre_registered(PreRegisteredClient::public("fixed"))
        .redirect(RedirectTarget::Loopback(
            LoopbackRedirect::new().path("done"),
        ))
        .build()
        .unwrap();
    world.whoami(&provider).await.unwrap();
    let authorize = world.auth.last_request(Endpoint::Authorize).unwrap();
    assert!(
        authorize
            .param("redirect_uri")
            .is_some_and(|u| u.starts_with("http://127.0.0.1:") && u.ends_with("/done"))
    );
}
