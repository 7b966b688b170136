//! The token endpoint: refresh, client authentication, lifetimes, errors.

use std::time::Duration;

use mcp_authkit_testkit::{
    ClientAuthMethod, ClientRegistration, Endpoint, Pkce, TestAuthServer, TokenGrant,
};

use crate::support::*;

#[tokio::test]
async fn refresh_rotates_and_the_old_refresh_token_stops_working() {
    let server = server().await;
    let client = public_client(&server);
    let first = tokens_for(&server, &client).await;
    let old = str_of(&first, "refresh_token");

    let (status, second) = refresh(&server, &client, old, &[("resource", RESOURCE)]).await;
    assert_eq!(status, 200, "{second}");
    let new = str_of(&second, "refresh_token");
    assert_ne!(new, old);
    let info = server.introspect(str_of(&second, "access_token")).unwrap();
    assert_eq!((info.subject.as_str(), info.scopes.len()), ("alice", 2));
    assert_eq!(info.resources, [RESOURCE]);

    let (status, body) = refresh(&server, &client, old, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, _) = refresh(&server, &client, new, &[]).await;
    assert_eq!(status, 200);
    assert_eq!(server.hits(Endpoint::RefreshTokenGrant), 3);
    assert_eq!(
        server
            .last_request(Endpoint::RefreshTokenGrant)
            .unwrap()
            .param("refresh_token"),
        Some(new)
    );
}

#[tokio::test]
async fn refresh_may_downscope_but_never_widen() {
    let server = server().await;
    let client = public_client(&server);
    let tokens = tokens_for(&server, &client).await;

    let (status, narrowed) = refresh(
        &server,
        &client,
        str_of(&tokens, "refresh_token"),
        &[("scope", "read")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(narrowed["scope"], "read");
    let info = server
        .introspect(str_of(&narrowed, "access_token"))
        .unwrap();
    assert_eq!(info.scopes, ["read"]);

    // The rotated refresh token keeps the original grant.
    let (status, full) = refresh(&server, &client, str_of(&narrowed, "refresh_token"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(full["scope"], "read write");

    let (status, body) = refresh(
        &server,
        &client,
        str_of(&full, "refresh_token"),
        &[("scope", "read admin")],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    let (status, body) = refresh(
        &server,
        &client,
        str_of(&full, "refresh_token"),
        &[("resource", "https://elsewhere.example/")],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target"))
    );
}

#[tokio::test]
async fn without_rotation_the_refresh_token_is_kept_and_not_resent() {
    let server = TestAuthServer::builder()
        .settings(|s| s.rotate_refresh_tokens = false)
        .start()
        .await
        .unwrap();
    let client = public_client(&server);
    let tokens = tokens_for(&server, &client).await;
    let refresh_token = str_of(&tokens, "refresh_token");
    for _ in 0..2 {
        let (status, body) = refresh(&server, &client, refresh_token, &[]).await;
        assert_eq!(status, 200);
        assert!(body.get("refresh_token").is_none(), "{body}");
    }
}

#[tokio::test]
async fn a_refresh_token_of_another_client_is_invalid_grant() {
    let server = server().await;
    let client = public_client(&server);
    let other = public_client(&server);
    let tokens = tokens_for(&server, &client).await;
    let (status, body) = refresh(&server, &other, str_of(&tokens, "refresh_token"), &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
}

/// A confidential client with a fresh code.
struct Confidential {
    id: String,
    secret: String,
    code: String,
    verifier: String,
}

impl Confidential {
    async fn new(server: &TestAuthServer, method: ClientAuthMethod) -> Self {
        let client = server
            .register_client(ClientRegistration::confidential(REDIRECT_URI).auth_method(method))
            .unwrap();
        let pkce = Pkce::new();
        let code = code_for(server, &client, &pkce).await;
        Confidential {
            id: client.client_id,
            secret: client.client_secret.unwrap(),
            code,
            verifier: pkce.verifier().to_owned(),
        }
    }

    /// The code exchange form, without client authentication.
    fn code_form(&self) -> Vec<(&str, &str)> {
        vec![
            ("grant_type", "authorization_code"),
            ("code", &self.code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", &self.verifier),
        ]
    }
}

#[tokio::test]
async fn client_secret_basic_is_verified() {
    let server = server().await;
    let c = Confidential::new(&server, ClientAuthMethod::ClientSecretBasic).await;
    let (id, secret) = (&c.id, &c.secret);
    let send = |user: &str, password: &str| {
        http()
            .post(server.token_endpoint())
            .basic_auth(user, Some(password))
            .form(&c.code_form())
            .send()
    };

    let wrong = send(id, "wrong").await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(
        wrong.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");

    // The registered method only: the same secret in the body is refused.
    let mut form = c.code_form();
    form.extend([
        ("client_id", id.as_str()),
        ("client_secret", secret.as_str()),
    ]);
    let (status, body) = post_token(&server, &form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );

    let ok = send(id, secret).await.unwrap();
    assert_eq!(ok.status(), 200);
    let sent = server.last_request(Endpoint::Token).unwrap();
    assert!(sent.header("authorization").unwrap().starts_with("Basic "));
    assert!(
        !format!("{sent:?}").contains(&secret[..10]),
        "Debug redacts Authorization"
    );
}

#[tokio::test]
async fn client_secret_post_is_verified() {
    let server = server().await;
    let c = Confidential::new(&server, ClientAuthMethod::ClientSecretPost).await;
    let (id, secret) = (&c.id, &c.secret);
    let mut form = c.code_form();
    form.extend([("client_id", id.as_str()), ("client_secret", "wrong")]);
    let (status, body) = post_token(&server, &form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );

    // Two methods at once are refused outright.
    let both = http()
        .post(server.token_endpoint())
        .basic_auth(id, Some(secret))
        .form(&[c.code_form(), vec![("client_secret", secret.as_str())]].concat())
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), 400);

    let mut form = c.code_form();
    form.extend([
        ("client_id", id.as_str()),
        ("client_secret", secret.as_str()),
    ]);
    let (status, body) = post_token(&server, &form).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_request_without_client_identification_is_invalid_client() {
    let server = server().await;
    let client = public_client(&server);
    let pkce = Pkce::new();
    let code = code_for(&server, &client, &pkce).await;
    let (status, body) = post_token(
        &server,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT_URI),
            ("code_verifier", pkce.verifier()),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, body) = post_token(
        &server,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", "unknown"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
}

#[tokio::test]
async fn malformed_token_requests_get_rfc6749_errors() {
    let server = server().await;
    let client = public_client(&server);
    let id = client.client_id.as_str();
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("client_id", id)], "invalid_request"),
        (
            &[("grant_type", "password"), ("client_id", id)],
            "unsupported_grant_type",
        ),
        (
            &[("grant_type", "authorization_code"), ("client_id", id)],
            "invalid_request",
        ),
        (
            &[
                ("grant_type", "refresh_token"),
                ("grant_type", "refresh_token"),
                ("client_id", id),
            ],
            "invalid_request",
        ),
    ];
    for (form, error) in cases {
        let (status, body) = post_token(&server, form).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(error)),
            "{form:?}"
        );
        assert!(body["error_description"].is_string());
    }
    let json_body = http()
        .post(server.token_endpoint())
        .json(&serde_json::json!({"grant_type": "refresh_token"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_body.status(), 400);
    assert_eq!(
        json_body.headers()["cache-control"],
        "no-store",
        "error bodies are not cached either"
    );
}

#[tokio::test]
async fn lifetimes_and_response_shape_are_configurable() {
    let server = TestAuthServer::builder()
        .access_token_lifetime(Duration::from_secs(0))
        .refresh_token_lifetime(Some(Duration::from_millis(150)))
        .settings(|s| {
            s.token_type = "bearer".into();
            s.extra_token_fields
                .insert("id_token".into(), "not-a-jwt".into());
        })
        .start()
        .await
        .unwrap();
    let client = public_client(&server);
    let tokens = tokens_for(&server, &client).await;
    assert_eq!(tokens["expires_in"], 0);
    assert_eq!(tokens["token_type"], "bearer");
    assert_eq!(tokens["id_token"], "not-a-jwt");
    assert!(
        server.introspect(str_of(&tokens, "access_token")).is_none(),
        "already expired"
    );

    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = refresh(&server, &client, str_of(&tokens, "refresh_token"), &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    server.update_settings(|s| {
        s.send_expires_in = false;
        s.issue_refresh_tokens = false;
    });
    let tokens = tokens_for(&server, &client).await;
    assert!(tokens.get("expires_in").is_none() && tokens.get("refresh_token").is_none());
}

#[tokio::test]
async fn revocation_and_expiry_switches() {
    let server = server().await;
    let client = public_client(&server);
    let tokens = tokens_for(&server, &client).await;
    let access = str_of(&tokens, "access_token");

    assert_eq!(server.expire_access_tokens(), 1);
    assert!(server.introspect(access).is_none());
    let (status, refreshed) =
        refresh(&server, &client, str_of(&tokens, "refresh_token"), &[]).await;
    assert_eq!(
        status, 200,
        "refresh still works after access tokens expire"
    );

    // Both access tokens (one expired) and the rotated refresh token.
    assert_eq!(server.revoke_subject("alice"), 3);
    assert!(
        server
            .introspect(str_of(&refreshed, "access_token"))
            .is_none()
    );
    let (status, body) = refresh(&server, &client, str_of(&refreshed, "refresh_token"), &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    let minted = server
        .mint_tokens(
            TokenGrant::new(&client.client_id, "erin")
                .scopes(["read"])
                .resource(RESOURCE),
        )
        .unwrap();
    assert!(!format!("{minted:?}").contains(&minted.access_token));
    assert_eq!(
        server.introspect(&minted.access_token).unwrap().subject,
        "erin"
    );
    assert!(server.revoke_token(&minted.access_token));
    assert!(!server.revoke_token(&minted.access_token));
    let (status, _) = refresh(
        &server,
        &client,
        minted.refresh_token.as_deref().unwrap(),
        &[],
    )
    .await;
    assert_eq!(
        status, 200,
        "minted refresh tokens work at the token endpoint"
    );
    assert!(server.mint_tokens(TokenGrant::new("nobody", "x")).is_err());
}

#[tokio::test]
async fn introspection_over_http() {
    let server = server().await;
    let client = public_client(&server);
    let tokens = tokens_for(&server, &client).await;
    let introspect = |token: String| {
        let url = server.introspection_endpoint();
        async move {
            let response = http()
                .post(url)
                .form(&[("token", token)])
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, body) = introspect(str_of(&tokens, "access_token").to_owned()).await;
    assert_eq!(status, 200);
    assert_eq!(body["active"], true);
    assert_eq!(body["sub"], "alice");
    assert_eq!(body["scope"], "read write");
    assert_eq!(body["aud"], serde_json::json!([RESOURCE]));
    assert_eq!(body["iss"], server.issuer());
    let (_, body) = introspect(str_of(&tokens, "refresh_token").to_owned()).await;
    assert_eq!(
        (body["active"].as_bool(), body["token_type"].as_str()),
        (Some(true), Some("refresh_token"))
    );
    let (_, body) = introspect("made-up".to_owned()).await;
    assert_eq!(body, serde_json::json!({"active": false}));

    server.update_settings(|s| s.introspection = false);
    let (status, _) = get_json(&server.introspection_endpoint()).await;
    assert_eq!(status, 405, "GET is not allowed");
    let disabled = http()
        .post(server.introspection_endpoint())
        .form(&[("token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), 404);
}

/// Many tasks on several threads race with one code, then with one refresh
/// token: each is honoured exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn codes_and_rotated_refresh_tokens_are_single_use_under_concurrency() {
    let server = server().await;
    let client = public_client(&server);
    let pkce = Pkce::new();
    let code = code_for(&server, &client, &pkce).await;
    let race = |form: Vec<(String, String)>| {
        let url = server.token_endpoint();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (url, form) = (url.clone(), form.clone());
                tokio::spawn(async move {
                    let response = http().post(url).form(&form).send().await.unwrap();
                    let status = response.status().as_u16();
                    (status, response.json::<serde_json::Value>().await.unwrap())
                })
            })
            .collect();
        async move {
            let mut results = Vec::new();
            for task in tasks {
                results.push(task.await.unwrap());
            }
            results
        }
    };
    let owned = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };

    let results = race(owned(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", REDIRECT_URI),
        ("client_id", &client.client_id),
        ("code_verifier", pkce.verifier()),
    ]))
    .await;
    let winners: Vec<_> = results
        .iter()
        .filter(|(status, _)| *status == 200)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|(s, b)| *s == 200 || b["error"] == "invalid_grant")
    );

    // The replays revoked the winner's tokens (RFC 6749 section 4.1.2), so
    // start from a fresh authorization for the refresh race.
    let tokens = tokens_for(&server, &client).await;
    let results = race(owned(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", str_of(&tokens, "refresh_token")),
        ("client_id", &client.client_id),
    ]))
    .await;
    let winners: Vec<_> = results
        .iter()
        .filter(|(status, _)| *status == 200)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let newest = str_of(&winners[0].1, "refresh_token").to_owned();
    let (status, _) = refresh(&server, &client, &newest, &[]).await;
    assert_eq!(
        status, 200,
        "without reuse detection the winner keeps its session"
    );
}

#[tokio::test]
async fn reuse_detection_revokes_the_whole_authorization() {
    let server = TestAuthServer::builder()
        .settings(|s| s.revoke_on_refresh_token_reuse = true)
        .start()
        .await
        .unwrap();
    let client = public_client(&server);
    let tokens = tokens_for(&server, &client).await;
    let old = str_of(&tokens, "refresh_token");
    let (status, rotated) = refresh(&server, &client, old, &[]).await;
    assert_eq!(status, 200);
    let access = str_of(&rotated, "access_token");
    assert!(server.introspect(access).is_some());

    let (status, body) = refresh(&server, &client, old, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(str_of(&body, "error_description").contains("reuse"));
    assert!(server.introspect(access).is_none());
    let (status, _) = refresh(&server, &client, str_of(&rotated, "refresh_token"), &[]).await;
    assert_eq!(status, 400, "the newest refresh token is revoked too");
}
