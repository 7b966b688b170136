//! `/authorize` and the code exchange.

use mcp_authkit_testkit::{
    AuthorizationRequest, AuthorizationResponse, Browser, ClientRegistration, ConsentMode,
    Endpoint, IssParameter, Pkce, TestAuthServer, USER_QUERY_PARAM, WRONG_ISSUER,
};
use url::Url;

use crate::support::*;

#[tokio::test]
async fn the_code_flow_with_pkce_issues_tokens_for_the_user_scopes_and_resource() {
    let server = server().await;
    let client = public_client(&server);
    let pkce = Pkce::new();
    let response = authorize(
        &server,
        &AuthorizationRequest::new(&client)
            .pkce(&pkce)
            .state("opaque-state")
            .scope("read write")
            .resource(RESOURCE),
    )
    .await;
    assert_eq!(response.state.as_deref(), Some("opaque-state"));
    assert_eq!(response.iss.as_deref(), Some(server.issuer()));
    assert_eq!(response.error, None);
    let code = response.code.unwrap();

    let (status, body) = exchange(&server, &client, &code, pkce.verifier()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(str_of(&body, "token_type"), "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(str_of(&body, "scope"), "read write");
    assert!(str_of(&body, "refresh_token").starts_with("rt_"));

    let info = server.introspect(str_of(&body, "access_token")).unwrap();
    assert_eq!(info.subject, "alice");
    assert_eq!(info.client_id, client.client_id);
    assert_eq!(info.scopes, ["read", "write"]);
    assert_eq!(info.resources, [RESOURCE]);
    assert!(info.expires_at > info.issued_at);

    // The token works at the stand-in API; a made-up one does not.
    let api = http()
        .get(server.userinfo_endpoint())
        .bearer_auth(str_of(&body, "access_token"))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 200);
    let me: serde_json::Value = api.json().await.unwrap();
    assert_eq!(me["sub"], "alice");
    let bad = http()
        .get(server.userinfo_endpoint())
        .bearer_auth("at_made_up")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    assert!(
        bad.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );

    assert_eq!(server.hits(Endpoint::Authorize), 1);
    assert_eq!(server.hits(Endpoint::Token), 1);
    assert_eq!(server.hits(Endpoint::AuthorizationCodeGrant), 1);
    assert_eq!(server.hits(Endpoint::RefreshTokenGrant), 0);
    let sent = server
        .last_request(Endpoint::AuthorizationCodeGrant)
        .unwrap();
    assert_eq!(sent.param("code_verifier"), Some(pkce.verifier()));
    assert_eq!(sent.param("client_id"), Some(client.client_id.as_str()));
    let shown = format!("{sent:?}");
    assert!(
        !shown.contains(pkce.verifier()) && !shown.contains(&code),
        "{shown}"
    );
}

#[tokio::test]
async fn a_wrong_code_verifier_is_invalid_grant_and_leaves_the_code_usable() {
    let server = server().await;
    let client = public_client(&server);
    let pkce = Pkce::new();
    let code = code_for(&server, &client, &pkce).await;

    let (status, body) = exchange(&server, &client, &code, Pkce::new().verifier()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert!(str_of(&body, "error_description").contains("PKCE"));

    let (status, body) = exchange(&server, &client, &code, pkce.verifier()).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_missing_code_verifier_is_invalid_request() {
    let server = server().await;
    let client = public_client(&server);
    let code = code_for(&server, &client, &Pkce::new()).await;
    let (status, body) = post_token(
        &server,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", client.redirect_uri()),
            ("client_id", &client.client_id),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_request");
}

#[tokio::test]
async fn a_reused_code_is_invalid_grant_and_revokes_what_it_gave() {
    let server = server().await;
    let client = public_client(&server);
    let pkce = Pkce::new();
    let code = code_for(&server, &client, &pkce).await;
    let (status, first) = exchange(&server, &client, &code, pkce.verifier()).await;
    assert_eq!(status, 200);
    let access_token = str_of(&first, "access_token");
    assert!(server.introspect(access_token).is_some());

    let (status, body) = exchange(&server, &client, &code, pkce.verifier()).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert!(
        server.introspect(access_token).is_none(),
        "tokens of a replayed code are revoked"
    );
    let (status, body) = refresh(&server, &client, str_of(&first, "refresh_token"), &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn the_code_is_bound_to_its_client_and_redirect_uri() {
    let server = server().await;
    let client = public_client(&server);
    let other = server
        .register_client(ClientRegistration::public(REDIRECT_URI))
        .unwrap();
    let pkce = Pkce::new();
    let code = code_for(&server, &client, &pkce).await;

    let (status, body) = exchange(&server, &other, &code, pkce.verifier()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    let (status, body) = post_token(
        &server,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:9/other"),
            ("client_id", &client.client_id),
            ("code_verifier", pkce.verifier()),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    let (status, body) = exchange(&server, &client, "code_unknown", pkce.verifier()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn an_unregistered_redirect_uri_gets_an_error_page_never_a_redirect() {
    let server = server().await;
    let client = public_client(&server);
    let request = AuthorizationRequest::new(&client)
        .redirect_uri("https://attacker.example/steal")
        .pkce(&Pkce::new())
        .state("s");
    let navigation = Browser::new()
        .get(server.authorization_url(&request).as_str())
        .await
        .unwrap();
    assert_eq!(navigation.hops().len(), 1);
    assert_eq!(navigation.hops()[0].location, None);
    let page = navigation.page().unwrap();
    assert_eq!(page.status, 400);
    assert!(page.body.contains("is not registered"), "{}", page.body);

    // An unknown client, and a missing client_id, are error pages too.
    for request in [
        AuthorizationRequest::for_client_id("nobody").redirect_uri(REDIRECT_URI),
        AuthorizationRequest::for_client_id(""),
    ] {
        let navigation = Browser::new()
            .get(server.authorization_url(&request).as_str())
            .await
            .unwrap();
        assert_eq!(navigation.page().unwrap().status, 400);
        assert_eq!(navigation.hops()[0].location, None);
    }
}

#[tokio::test]
async fn pkce_is_s256_only_unless_configured() {
    let server = server().await;
    let client = public_client(&server);
    let pkce = Pkce::new();

    let plain = AuthorizationRequest::new(&client)
        .code_challenge(pkce.verifier(), Some("plain"))
        .state("st");
    let response = authorize(&server, &plain).await;
    assert_eq!(response.error.as_deref(), Some("invalid_request"));
    assert_eq!(response.state.as_deref(), Some("st"));
    assert_eq!(response.iss.as_deref(), Some(server.issuer()));
    assert_eq!(response.code, None);

    let missing = AuthorizationRequest::new(&client).state("st");
    let response = authorize(&server, &missing).await;
    assert_eq!(response.error.as_deref(), Some("invalid_request"));

    server.update_settings(|s| {
        s.allow_plain_pkce = true;
        s.require_pkce = false;
    });
    let code = authorize(&server, &plain)
        .await
        .code
        .expect("plain allowed");
    let (status, _) = exchange(&server, &client, &code, pkce.verifier()).await;
    assert_eq!(status, 200);

    // Without a challenge, sending a verifier anyway is refused (downgrade).
    let code = authorize(&server, &missing)
        .await
        .code
        .expect("no PKCE allowed");
    let (status, body) = exchange(&server, &client, &code, pkce.verifier()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
}

#[tokio::test]
async fn the_consent_page_can_be_approved_or_denied_in_the_browser() {
    let server = TestAuthServer::builder()
        .consent(ConsentMode::Page)
        .start()
        .await
        .unwrap();
    let client = server
        .register_client(ClientRegistration::public(REDIRECT_URI).name("Demo <app>"))
        .unwrap();
    let pkce = Pkce::new();
    let request = AuthorizationRequest::new(&client)
        .pkce(&pkce)
        .state("st")
        .scope("read");
    let browser = browser("bob");

    let shown = browser
        .get(server.authorization_url(&request).as_str())
        .await
        .unwrap();
    let page = shown.page().expect("the consent page");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Demo &lt;app&gt;"), "{}", page.body);
    let consent_id = page.input_value("consent_id").unwrap();
    let pending = server.pending_consents();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, consent_id);
    assert_eq!(pending[0].subject, "bob");
    assert_eq!(pending[0].scopes, ["read"]);

    let approved = browser
        .post_form(
            server.consent_endpoint().as_str(),
            &[("consent_id", &consent_id), ("decision", "approve")],
        )
        .await
        .unwrap();
    let response = approved.authorization_response();
    assert_eq!(response.state.as_deref(), Some("st"));
    let (status, body) = exchange(&server, &client, &response.code.unwrap(), pkce.verifier()).await;
    assert_eq!(status, 200);
    assert_eq!(
        server
            .introspect(str_of(&body, "access_token"))
            .unwrap()
            .subject,
        "bob"
    );
    assert!(server.pending_consents().is_empty());

    // A decided consent cannot be decided again.
    let again = browser
        .post_form(
            server.consent_endpoint().as_str(),
            &[("consent_id", &consent_id), ("decision", "approve")],
        )
        .await
        .unwrap();
    assert_eq!(again.page().unwrap().status, 400);

    browser
        .get(server.authorization_url(&request).as_str())
        .await
        .unwrap();
    let id = server.pending_consents()[0].id.clone();
    let denied = browser
        .post_form(
            server.consent_endpoint().as_str(),
            &[("consent_id", &id), ("decision", "deny")],
        )
        .await
        .unwrap();
    assert_eq!(
        denied.authorization_response().error.as_deref(),
        Some("access_denied")
    );
    assert_eq!(server.hits(Endpoint::Consent), 3);
}

#[tokio::test]
async fn consent_can_be_decided_programmatically() {
    let server = TestAuthServer::builder()
        .consent(ConsentMode::Page)
        .start()
        .await
        .unwrap();
    let client = public_client(&server);
    let request = AuthorizationRequest::new(&client)
        .pkce(&Pkce::new())
        .state("st");
    Browser::new()
        .get(server.authorization_url(&request).as_str())
        .await
        .unwrap();
    Browser::new()
        .get(server.authorization_url(&request).as_str())
        .await
        .unwrap();
    let pending = server.pending_consents();
    assert_eq!(pending.len(), 2);

    let approved = server.approve_consent(&pending[0].id).unwrap();
    assert!(approved.as_str().starts_with(REDIRECT_URI));
    let response = AuthorizationResponse::from_url(&approved);
    assert!(response.code.is_some());
    assert_eq!(response.state.as_deref(), Some("st"));
    assert_eq!(response.iss.as_deref(), Some(server.issuer()));

    let denied = AuthorizationResponse::from_url(&server.deny_consent(&pending[1].id).unwrap());
    assert_eq!(denied.error.as_deref(), Some("access_denied"));
    assert_eq!(denied.code, None);

    let error = server.approve_consent(&pending[0].id).unwrap_err();
    assert!(error.to_string().contains("no pending consent"), "{error}");
}

#[tokio::test]
async fn deny_mode_answers_access_denied() {
    let server = TestAuthServer::builder()
        .consent(ConsentMode::Deny)
        .start()
        .await
        .unwrap();
    let client = public_client(&server);
    let response = authorize(
        &server,
        &AuthorizationRequest::new(&client)
            .pkce(&Pkce::new())
            .state("st"),
    )
    .await;
    assert_eq!(response.error.as_deref(), Some("access_denied"));
    assert_eq!(response.state.as_deref(), Some("st"));
    assert_eq!(response.code, None);
}

#[tokio::test]
async fn the_iss_parameter_can_be_omitted_or_wrong() {
    let server = server().await;
    let client = public_client(&server);
    let request = AuthorizationRequest::new(&client).pkce(&Pkce::new());

    server.update_settings(|s| s.iss_parameter = IssParameter::Omitted);
    assert_eq!(authorize(&server, &request).await.iss, None);
    let (_, metadata) = get_json(&server.metadata_url()).await;
    assert_eq!(
        metadata["authorization_response_iss_parameter_supported"],
        false
    );

    server.update_settings(|s| s.iss_parameter = IssParameter::Wrong);
    assert_eq!(
        authorize(&server, &request).await.iss.as_deref(),
        Some(WRONG_ISSUER)
    );
    let (_, metadata) = get_json(&server.metadata_url()).await;
    assert_eq!(
        metadata["authorization_response_iss_parameter_supported"],
        true
    );
}

#[tokio::test]
async fn the_user_comes_from_the_header_the_query_or_the_default() {
    let server = TestAuthServer::builder()
        .default_subject("default-user")
        .start()
        .await
        .unwrap();
    let client = public_client(&server);
    let subject_of = |body: serde_json::Value| {
        server
            .introspect(body["access_token"].as_str().unwrap())
            .unwrap()
            .subject
    };
    let stop = Url::parse(REDIRECT_URI).unwrap();
    for (browser, request_user, expected) in [
        (Browser::new(), None, "default-user"),
        (Browser::new(), Some("carol"), "carol"),
        (Browser::new().with_user("dave"), Some("carol"), "dave"),
    ] {
        let pkce = Pkce::new();
        let mut request = AuthorizationRequest::new(&client).pkce(&pkce);
        if let Some(user) = request_user {
            request = request.param(USER_QUERY_PARAM, user);
        }
        let navigation = browser
            .stop_before(&stop)
            .get(server.authorization_url(&request).as_str())
            .await
            .unwrap();
        let code = navigation.authorization_response().code.unwrap();
        let (_, body) = exchange(&server, &client, &code, pkce.verifier()).await;
        assert_eq!(subject_of(body), expected);
    }
}

#[tokio::test]
async fn resources_are_checked_at_authorize_and_token() {
    let server = server().await;
    let client = public_client(&server);
    let request = AuthorizationRequest::new(&client).pkce(&Pkce::new());

    server.update_settings(|s| s.require_resource = true);
    let response = authorize(&server, &request).await;
    assert_eq!(response.error.as_deref(), Some("invalid_target"));
    let response = authorize(&server, &request.clone().resource("not a uri")).await;
    assert_eq!(response.error.as_deref(), Some("invalid_target"));

    // Two resources authorized; the token request narrows to one, and may
    // not name a third.
    let pkce = Pkce::new();
    let two = AuthorizationRequest::new(&client)
        .pkce(&pkce)
        .resource(RESOURCE)
        .resource("https://other.example/api");
    let code = authorize(&server, &two).await.code.unwrap();
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", client.redirect_uri()),
        ("client_id", client.client_id.as_str()),
        ("code_verifier", pkce.verifier()),
        ("resource", "https://third.example/"),
    ];
    let (status, body) = post_token(&server, &form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target"))
    );
    form.pop();
    form.push(("resource", RESOURCE));
    let (status, body) = post_token(&server, &form).await;
    assert_eq!(status, 200, "{body}");
    let info = server.introspect(str_of(&body, "access_token")).unwrap();
    assert_eq!(info.resources, [RESOURCE]);
    assert_eq!(
        server
            .last_request(Endpoint::Authorize)
            .unwrap()
            .params("resource"),
        [RESOURCE, "https://other.example/api"]
    );
}

#[tokio::test]
async fn scopes_can_be_restricted_narrowed_or_defaulted() {
    let server = server().await;
    let client = public_client(&server);
    server.update_settings(|s| {
        s.scopes_supported = Some(vec!["read".into(), "write".into()]);
        s.default_scopes = vec!["read".into()];
    });
    let response = authorize(
        &server,
        &AuthorizationRequest::new(&client)
            .pkce(&Pkce::new())
            .scope("admin"),
    )
    .await;
    assert_eq!(response.error.as_deref(), Some("invalid_scope"));

    let pkce = Pkce::new();
    let code = authorize(&server, &AuthorizationRequest::new(&client).pkce(&pkce))
        .await
        .code
        .unwrap();
    let (_, body) = exchange(&server, &client, &code, pkce.verifier()).await;
    assert_eq!(body["scope"], "read");

    server.update_settings(|s| s.grant_only = Some(vec!["read".into()]));
    let pkce = Pkce::new();
    let code = authorize(
        &server,
        &AuthorizationRequest::new(&client)
            .pkce(&pkce)
            .scope("read write"),
    )
    .await
    .code
    .unwrap();
    let (_, body) = exchange(&server, &client, &code, pkce.verifier()).await;
    assert_eq!(body["scope"], "read", "the grant was narrowed");
}

#[tokio::test]
async fn loopback_redirects_may_change_port_only_when_allowed() {
    let server = server().await;
    let client = server
        .register_client(ClientRegistration::public("http://127.0.0.1:4000/cb"))
        .unwrap();
    let request = AuthorizationRequest::new(&client)
        .redirect_uri("http://127.0.0.1:4999/cb")
        .pkce(&Pkce::new());
    let url = server.authorization_url(&request);
    let navigation = Browser::new().get(url.as_str()).await.unwrap();
    assert_eq!(navigation.page().unwrap().status, 400);

    server.update_settings(|s| s.loopback_redirect_any_port = true);
    let stop = Url::parse("http://127.0.0.1:4999/").unwrap();
    let navigation = Browser::new()
        .stop_before(&stop)
        .get(url.as_str())
        .await
        .unwrap();
    let stopped = navigation
        .stopped_at()
        .expect("redirected to the requested port");
    assert_eq!(stopped.port(), Some(4999));
}

#[tokio::test]
async fn a_client_with_several_redirect_uris_must_name_one() {
    let server = server().await;
    let client = server
        .register_client(
            ClientRegistration::public(REDIRECT_URI).redirect_uri("http://127.0.0.1:9/b"),
        )
        .unwrap();
    let request = AuthorizationRequest::new(&client)
        .without_redirect_uri()
        .pkce(&Pkce::new());
    let navigation = Browser::new()
        .get(server.authorization_url(&request).as_str())
        .await
        .unwrap();
    assert_eq!(navigation.page().unwrap().status, 400);

    // With one registered URI it may be left out, and then also at /token.
    let single = public_client(&server);
    let pkce = Pkce::new();
    let code = authorize(
        &server,
        &AuthorizationRequest::new(&single)
            .without_redirect_uri()
            .pkce(&pkce),
    )
    .await
    .code
    .unwrap();
    let (status, body) = post_token(
        &server,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", &single.client_id),
            ("code_verifier", pkce.verifier()),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
}
