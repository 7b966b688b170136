//! Discovery documents and their defects.

use mcp_authkit_testkit::{
    AuthorizationRequest, ClientAuthMethod, DiscoveryDocuments, Endpoint, Failure, MetadataFault,
    Pkce, TestAuthServer, WRONG_ISSUER,
};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn both_documents_describe_the_server_for_mcp_clients() {
    let server = server().await;
    let (status, oauth) = get_json(&server.metadata_url()).await;
    assert_eq!(status, 200);
    assert_eq!(oauth["issuer"], server.issuer());
    assert!(!server.issuer().ends_with('/'));
    assert_eq!(
        oauth["authorization_endpoint"],
        server.authorization_endpoint().as_str()
    );
    assert_eq!(oauth["token_endpoint"], server.token_endpoint().as_str());
    assert_eq!(
        oauth["registration_endpoint"],
        server.registration_endpoint().as_str()
    );
    assert_eq!(
        oauth["introspection_endpoint"],
        server.introspection_endpoint().as_str()
    );
    assert_eq!(oauth["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        oauth["token_endpoint_auth_methods_supported"],
        json!([
            "client_secret_basic",
            "client_secret_post",
            "none",
            "private_key_jwt"
        ])
    );
    assert_eq!(
        oauth["authorization_response_iss_parameter_supported"],
        true
    );
    assert_eq!(oauth["client_id_metadata_document_supported"], true);
    assert_eq!(oauth["response_types_supported"], json!(["code"]));
    assert_eq!(
        oauth["grant_types_supported"],
        json!([
            "authorization_code",
            "refresh_token",
            "client_credentials",
            "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "urn:ietf:params:oauth:grant-type:token-exchange"
        ])
    );
    assert_eq!(
        oauth["revocation_endpoint"],
        server.revocation_endpoint().as_str()
    );

    let (status, openid) = get_json(&server.openid_configuration_url()).await;
    assert_eq!(status, 200);
    assert_eq!(openid, oauth);
    assert_eq!(server.hits(Endpoint::AuthorizationServerMetadata), 1);
    assert_eq!(server.hits(Endpoint::OpenIdConfiguration), 1);

    server.update_settings(|s| {
        s.dynamic_registration = false;
        s.client_id_metadata_documents = false;
        s.introspection = false;
        s.allow_plain_pkce = true;
        s.scopes_supported = Some(vec!["read".into()]);
        s.token_endpoint_auth_methods = vec![ClientAuthMethod::None];
    });
    let (_, changed) = get_json(&server.metadata_url()).await;
    assert!(changed.get("registration_endpoint").is_none());
    assert!(changed.get("introspection_endpoint").is_none());
    assert_eq!(changed["client_id_metadata_document_supported"], false);
    assert_eq!(
        changed["code_challenge_methods_supported"],
        json!(["S256", "plain"])
    );
    assert_eq!(changed["scopes_supported"], json!(["read"]));
    assert_eq!(
        changed["token_endpoint_auth_methods_supported"],
        json!(["none"])
    );
}

#[tokio::test]
async fn an_issuer_with_a_path_uses_path_insertion_and_appending() {
    let server = TestAuthServer::builder()
        .issuer_path("/tenant1")
        .start()
        .await
        .unwrap();
    assert!(server.issuer().ends_with("/tenant1"));
    assert!(
        server
            .metadata_url()
            .as_str()
            .ends_with("/.well-known/oauth-authorization-server/tenant1")
    );
    assert!(
        server
            .openid_configuration_url()
            .as_str()
            .ends_with("/.well-known/openid-configuration/tenant1")
    );
    assert!(
        server
            .openid_configuration_appended_url()
            .as_str()
            .ends_with("/tenant1/.well-known/openid-configuration")
    );
    for url in [
        server.metadata_url(),
        server.openid_configuration_url(),
        server.openid_configuration_appended_url(),
    ] {
        let (status, doc) = get_json(&url).await;
        assert_eq!(status, 200, "{url}");
        assert_eq!(doc["issuer"], server.issuer());
        assert!(
            doc["token_endpoint"]
                .as_str()
                .unwrap()
                .contains("/tenant1/token")
        );
    }
    // The root documents belong to another issuer.
    let (status, _) = get_json(
        &server
            .base_url()
            .join("/.well-known/oauth-authorization-server")
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);

    // And the flow works under the path, with the path in `iss`.
    let client = public_client(&server);
    let pkce = Pkce::new();
    let code = code_for(&server, &client, &pkce).await;
    let (status, _) = exchange(&server, &client, &code, pkce.verifier()).await;
    assert_eq!(status, 200);
    let response = authorize(&server, &AuthorizationRequest::new(&client).pkce(&pkce)).await;
    assert_eq!(response.iss.as_deref(), Some(server.issuer()));
}

#[tokio::test]
async fn which_documents_are_served_is_selectable() {
    let server = TestAuthServer::builder()
        .issuer_path("/t")
        .start()
        .await
        .unwrap();
    let cases = [
        (DiscoveryDocuments::OAuthOnly, [200, 404, 404]),
        (DiscoveryDocuments::OpenIdOnly, [404, 200, 200]),
        (DiscoveryDocuments::OpenIdPathAppendedOnly, [404, 404, 200]),
        (DiscoveryDocuments::None, [404, 404, 404]),
        (DiscoveryDocuments::All, [200, 200, 200]),
    ];
    for (documents, expected) in cases {
        server.update_settings(|s| s.discovery = documents);
        let mut got = [0; 3];
        for (i, url) in [
            server.metadata_url(),
            server.openid_configuration_url(),
            server.openid_configuration_appended_url(),
        ]
        .iter()
        .enumerate()
        {
            got[i] = get_json(url).await.0;
        }
        assert_eq!(got, expected, "{documents:?}");
    }
}

#[tokio::test]
async fn openid_only_without_a_path_serves_the_single_openid_url() {
    let server = server().await;
    server.update_settings(|s| s.discovery = DiscoveryDocuments::OpenIdPathAppendedOnly);
    assert_eq!(
        server.openid_configuration_url(),
        server.openid_configuration_appended_url()
    );
    assert_eq!(get_json(&server.openid_configuration_url()).await.0, 200);
    assert_eq!(get_json(&server.metadata_url()).await.0, 404);
}

#[tokio::test]
async fn each_metadata_fault_breaks_the_documents_as_named() {
    let server = server().await;

    server.update_settings(|s| s.metadata_fault = Some(MetadataFault::NoCodeChallengeMethods));
    let (_, doc) = get_json(&server.metadata_url()).await;
    assert!(doc.get("code_challenge_methods_supported").is_none());

    server.update_settings(|s| s.metadata_fault = Some(MetadataFault::PlainPkceOnly));
    let (_, doc) = get_json(&server.openid_configuration_url()).await;
    assert_eq!(doc["code_challenge_methods_supported"], json!(["plain"]));

    server.update_settings(|s| s.metadata_fault = Some(MetadataFault::WrongIssuer));
    let (_, doc) = get_json(&server.metadata_url()).await;
    assert_eq!(doc["issuer"], WRONG_ISSUER);

    server.update_settings(|s| s.metadata_fault = Some(MetadataFault::MalformedJson));
    let response = http().get(server.metadata_url()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.json::<serde_json::Value>().await.is_err());

    server.update_settings(|s| s.metadata_fault = Some(MetadataFault::CrossOriginRedirect));
    let response = http().get(server.metadata_url()).send().await.unwrap();
    assert_eq!(response.status(), 302);
    let location = url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
    assert_ne!(location.origin(), server.base_url().origin());
    assert_eq!(location.origin(), server.other_origin().origin());
    assert_eq!(location.path(), server.metadata_url().path());
    // The other origin serves a valid-looking document a client must not trust.
    let (status, doc) = get_json(&location).await;
    assert_eq!(status, 200);
    assert_eq!(doc["issuer"], server.issuer());

    server.update_settings(|s| s.metadata_fault = None);
    assert_eq!(get_json(&server.metadata_url()).await.0, 200);
}

#[tokio::test]
async fn metadata_can_be_patched_and_fail_like_any_endpoint() {
    let server = TestAuthServer::builder()
        .metadata_patch(|doc| doc["token_endpoint"] = json!("https://elsewhere.example/token"))
        .start()
        .await
        .unwrap();
    let (_, doc) = get_json(&server.metadata_url()).await;
    assert_eq!(doc["token_endpoint"], "https://elsewhere.example/token");
    server.set_metadata_patch(|doc| {
        doc.as_object_mut().unwrap().remove("registration_endpoint");
    });
    let (_, doc) = get_json(&server.metadata_url()).await;
    assert!(doc.get("registration_endpoint").is_none());
    assert_eq!(doc["token_endpoint"], server.token_endpoint().as_str());

    server.fail_next(
        Endpoint::AuthorizationServerMetadata,
        1,
        Failure::Status(500),
    );
    assert_eq!(get_json(&server.metadata_url()).await.0, 500);
    assert_eq!(
        get_json(&server.openid_configuration_url()).await.0,
        200,
        "the other document is fine"
    );
}
