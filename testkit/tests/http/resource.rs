//! The protected-resource helper, with a real axum app behind it.

use axum::{Extension, Router, routing::post};
use mcp_authkit_testkit::{
    ClientRegistration, InvalidTokenAnswer, ProtectedResource, ResourceEvent,
    ResourceMetadataFault, TestAuthServer, TokenGrant, TokenInfo,
};
use serde_json::json;

use crate::support::*;

struct Setup {
    auth: TestAuthServer,
    resource: ProtectedResource,
    client_id: String,
}

async fn setup() -> Setup {
    let auth = server().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let resource = ProtectedResource::new(&auth, &url).unwrap();
    let app = Router::new().route(
        "/mcp",
        post(|Extension(token): Extension<TokenInfo>| async move { token.subject }),
    );
    let router = resource.protect(app);
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client_id = auth
        .register_client(ClientRegistration::public(REDIRECT_URI))
        .unwrap()
        .client_id;
    Setup {
        auth,
        resource,
        client_id,
    }
}

impl Setup {
    fn token(&self, scopes: &[&str], resource: &str) -> String {
        self.auth
            .mint_tokens(
                TokenGrant::new(&self.client_id, "alice")
                    .scopes(scopes.iter().copied())
                    .resource(resource),
            )
            .unwrap()
            .access_token
    }

    async fn call(&self, token: Option<&str>) -> (u16, String, String) {
        let mut request = http().post(self.resource.resource());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (
            response.status().as_u16(),
            challenge,
            response.text().await.unwrap(),
        )
    }
}

#[tokio::test]
async fn metadata_is_served_at_both_well_known_urls() {
    let s = setup().await;
    assert!(
        s.resource
            .metadata_url()
            .as_str()
            .ends_with("/.well-known/oauth-protected-resource/mcp")
    );
    s.resource
        .update_settings(|r| r.scopes_supported = Some(vec!["read".into(), "write".into()]));
    let expected = json!({
        "resource": s.resource.resource(),
        "authorization_servers": [s.auth.issuer()],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["read", "write"],
    });
    for url in [s.resource.metadata_url(), s.resource.root_metadata_url()] {
        let (status, doc) = get_json(url).await;
        assert_eq!((status, &doc), (200, &expected), "{url}");
    }
    assert_eq!(s.resource.hits(ResourceEvent::Metadata), 2);

    s.resource
        .update_settings(|r| r.serve_path_metadata = false);
    assert_eq!(get_json(s.resource.metadata_url()).await.0, 404);
    assert_eq!(get_json(s.resource.root_metadata_url()).await.0, 200);
}

#[tokio::test]
async fn metadata_faults() {
    let s = setup().await;
    s.resource
        .update_settings(|r| r.metadata_fault = Some(ResourceMetadataFault::WrongResource));
    let (_, doc) = get_json(s.resource.metadata_url()).await;
    assert_ne!(doc["resource"], s.resource.resource());
    s.resource.update_settings(|r| {
        r.metadata_fault = Some(ResourceMetadataFault::NoAuthorizationServers)
    });
    let (_, doc) = get_json(s.resource.metadata_url()).await;
    assert!(doc.get("authorization_servers").is_none());
    s.resource
        .update_settings(|r| r.metadata_fault = Some(ResourceMetadataFault::MalformedJson));
    let (status, doc) = get_json(s.resource.metadata_url()).await;
    assert_eq!(status, 200);
    assert!(doc.is_string(), "not JSON");
}

#[tokio::test]
async fn requests_are_challenged_then_let_through_with_the_token_info() {
    let s = setup().await;
    s.resource
        .update_settings(|r| r.required_scopes = vec!["read".into()]);
    let metadata = format!("resource_metadata=\"{}\"", s.resource.metadata_url());

    let (status, challenge, _) = s.call(None).await;
    assert_eq!(status, 401);
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(&metadata) && challenge.contains("scope=\"read\""),
        "{challenge}"
    );
    assert!(
        !challenge.contains("error="),
        "no error code without a token: {challenge}"
    );

    let (status, challenge, _) = s.call(Some("made-up")).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");

    let elsewhere = s.token(&["read"], "https://other.example/mcp");
    let (status, challenge, _) = s.call(Some(&elsewhere)).await;
    assert_eq!(status, 401, "a token for another audience is refused");
    assert!(
        challenge.contains("not issued for this resource"),
        "{challenge}"
    );

    let unscoped = s.token(&["other"], s.resource.resource());
    let (status, challenge, _) = s.call(Some(&unscoped)).await;
    assert_eq!(status, 403);
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains("scope=\"read\""),
        "{challenge}"
    );

    let good = s.token(&["read"], s.resource.resource());
    let (status, _, body) = s.call(Some(&good)).await;
    assert_eq!((status, body.as_str()), (200, "alice"));

    assert_eq!(s.resource.hits(ResourceEvent::Unauthorized), 3);
    assert_eq!(s.resource.hits(ResourceEvent::Forbidden), 1);
    assert_eq!(s.resource.hits(ResourceEvent::Authorized), 1);

    // Step-up: more scopes required at runtime, and an expired token.
    s.resource
        .update_settings(|r| r.required_scopes = vec!["read".into(), "write".into()]);
    let (status, challenge, _) = s.call(Some(&good)).await;
    assert_eq!(status, 403);
    assert!(challenge.contains("scope=\"read write\""), "{challenge}");
    s.auth.expire_access_tokens();
    assert_eq!(s.call(Some(&good)).await.0, 401);
}

#[tokio::test]
async fn challenges_can_leave_out_metadata_and_scope() {
    let s = setup().await;
    s.resource.update_settings(|r| {
        r.resource_metadata_in_challenge = false;
        r.scope_in_challenge = false;
        r.required_scopes = vec!["read".into()];
    });
    let (status, challenge, _) = s.call(None).await;
    assert_eq!((status, challenge.as_str()), (401, "Bearer"));

    // And audiences can be ignored, for servers that do not check them.
    s.resource.update_settings(|r| {
        r.require_audience = false;
        r.required_scopes.clear();
    });
    let token = s.token(&[], "https://other.example/");
    assert_eq!(s.call(Some(&token)).await.0, 200);
}

#[tokio::test]
async fn an_unknown_token_can_get_a_server_error_instead_of_a_challenge() {
    let s = setup().await;
    s.resource
        .update_settings(|r| r.invalid_token_answer = InvalidTokenAnswer::InternalError);
    let good = s.token(&[], s.resource.resource());
    assert_eq!(s.call(Some(&good)).await.0, 200);

    // As the TypeScript SDK's example server: 500, a JSON body, no challenge.
    s.auth.expire_access_tokens();
    let (status, challenge, body) = s.call(Some(&good)).await;
    assert_eq!((status, challenge.as_str()), (500, ""));
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "server_error");
    assert_eq!(s.call(Some("made-up")).await.0, 500);
    // No token at all still gets the challenge that starts a sign-in.
    let (status, challenge, _) = s.call(None).await;
    assert_eq!(status, 401);
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert_eq!(s.resource.hits(ResourceEvent::Unauthorized), 3);
}

#[test]
fn resource_urls_are_validated() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let auth = runtime.block_on(TestAuthServer::start()).unwrap();
    assert!(ProtectedResource::new(&auth, "not a url").is_err());
    assert!(ProtectedResource::new(&auth, "http://127.0.0.1:1/mcp?x=1").is_err());
    assert!(ProtectedResource::new(&auth, "http://127.0.0.1:1/a/:id").is_err());
    assert!(ProtectedResource::new(&auth, "http://127.0.0.1:1/a/*rest").is_err());
    let root = ProtectedResource::new(&auth, "http://127.0.0.1:1").unwrap();
    assert_eq!(root.metadata_url(), root.root_metadata_url());
}
