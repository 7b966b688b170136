//! Client ID Metadata Documents: URL client ids.

use mcp_authkit_testkit::{
    AuthorizationRequest, Browser, ClientSource, Endpoint, Failure, Pkce, TestAuthServer,
};
use serde_json::json;

use crate::support::*;

/// Hosts a metadata document for a client and returns its URL (the id).
fn host(server: &TestAuthServer, path: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let url = server.other_origin().join(path).unwrap().to_string();
    let mut document = json!({
        "client_id": url,
        "client_name": "CIMD client",
        "redirect_uris": [REDIRECT_URI],
        "token_endpoint_auth_method": "none",
    });
    edit(&mut document);
    server.host_json(path, document).to_string()
}

async fn error_page_for(server: &TestAuthServer, client_id: &str) -> String {
    let request = AuthorizationRequest::for_client_id(client_id)
        .redirect_uri(REDIRECT_URI)
        .pkce(&Pkce::new());
    let navigation = Browser::new()
        .get(server.authorization_url(&request).as_str())
        .await
        .unwrap();
    let page = navigation.page().expect("an error page, not a redirect");
    assert_eq!(page.status, 400);
    page.body.clone()
}

#[tokio::test]
async fn a_url_client_id_is_fetched_checked_and_used() {
    let server = server().await;
    let client_id = host(&server, "/clients/mcp.json", |_| {});
    let pkce = Pkce::new();
    let response = authorize(
        &server,
        &AuthorizationRequest::for_client_id(&client_id)
            .redirect_uri(REDIRECT_URI)
            .pkce(&pkce)
            .state("st"),
    )
    .await;
    let code = response
        .code
        .expect("a code for the metadata document client");
    assert_eq!(server.client_metadata_fetches(), 1);
    assert_eq!(server.hits(Endpoint::HostedDocument), 1);
    let client = server.client(&client_id).unwrap();
    assert_eq!(client.source, ClientSource::MetadataDocument);
    assert_eq!(client.name.as_deref(), Some("CIMD client"));

    let (status, body) = exchange(&server, &client, &code, pkce.verifier()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        server
            .introspect(str_of(&body, "access_token"))
            .unwrap()
            .client_id,
        client_id
    );
    let (status, _) = refresh(&server, &client, str_of(&body, "refresh_token"), &[]).await;
    assert_eq!(status, 200);

    // Each authorization fetches the document again.
    authorize(
        &server,
        &AuthorizationRequest::for_client_id(&client_id)
            .redirect_uri(REDIRECT_URI)
            .pkce(&pkce),
    )
    .await;
    assert_eq!(server.client_metadata_fetches(), 2);
}

#[tokio::test]
async fn a_document_whose_client_id_differs_is_refused() {
    let server = server().await;
    let client_id = host(&server, "/c.json", |doc| {
        doc["client_id"] = json!("https://someone.else/c.json")
    });
    let body = error_page_for(&server, &client_id).await;
    assert!(
        body.contains("is not the URL it was fetched from"),
        "{body}"
    );
}

#[tokio::test]
async fn a_redirect_uri_not_in_the_document_is_refused() {
    let server = server().await;
    let client_id = host(&server, "/c.json", |doc| {
        doc["redirect_uris"] = json!(["http://127.0.0.1:9/elsewhere"])
    });
    let body = error_page_for(&server, &client_id).await;
    assert!(body.contains("Client ID Metadata Document"), "{body}");
}

#[tokio::test]
async fn unusable_documents_are_refused() {
    let server = server().await;
    let secret = host(&server, "/secret.json", |doc| {
        doc["token_endpoint_auth_method"] = json!("client_secret_basic")
    });
    assert!(
        error_page_for(&server, &secret)
            .await
            .contains("shared secret")
    );

    let missing = server
        .other_origin()
        .join("/missing.json")
        .unwrap()
        .to_string();
    assert!(error_page_for(&server, &missing).await.contains("404"));

    let broken = host(&server, "/broken.json", |_| {});
    server.fail_next(Endpoint::HostedDocument, 1, Failure::MalformedJson);
    assert!(error_page_for(&server, &broken).await.contains("not JSON"));

    assert!(
        error_page_for(&server, "http://example.com/c.json")
            .await
            .contains("https")
    );
    assert!(
        error_page_for(&server, "https://example.com/")
            .await
            .contains("path")
    );
}

#[tokio::test]
async fn documents_can_be_disabled() {
    let server = server().await;
    server.update_settings(|s| s.client_id_metadata_documents = false);
    let client_id = host(&server, "/c.json", |_| {});
    assert!(
        error_page_for(&server, &client_id)
            .await
            .contains("disabled")
    );
    assert_eq!(server.client_metadata_fetches(), 0);
}
