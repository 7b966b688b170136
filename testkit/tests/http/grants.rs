//! The grants without a user, over HTTP: `client_credentials` with every
//! client authentication, token exchange at an identity provider, the
//! `jwt-bearer` grant with its ID-JAG, revocation, and their refusals.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mcp_authkit_testkit::{
    CLIENT_ASSERTION_TYPE, ClientAuthMethod, ClientRegistration, Endpoint, ID_JAG_JWT_TYPE,
    ID_JAG_TOKEN_TYPE, ID_TOKEN_TYPE, JWT_BEARER_GRANT, RegisteredClient, SigningKey,
    TOKEN_EXCHANGE_GRANT, TestAuthServer,
};
use serde_json::{Value, json};

use crate::support::{RESOURCE, get_json, http, post_token, public_client, server, str_of};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims_of(jwt: &str) -> Value {
    use base64::Engine as _;
    let part = jwt.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// An RFC 7523 client assertion for `client_id`, addressed to `audience`.
fn assertion(key: &SigningKey, client_id: &str, audience: &str, exp: u64) -> String {
    key.sign(
        None,
        &json!({
            "iss": client_id, "sub": client_id, "aud": audience, "exp": exp,
            "iat": now(), "jti": format!("jti-{}", rand_suffix()),
        }),
    )
}

fn rand_suffix() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn secret_client(server: &TestAuthServer, method: ClientAuthMethod) -> RegisteredClient {
    server
        .register_client(ClientRegistration::service(method).client_secret("s3cret"))
        .unwrap()
}

#[tokio::test]
async fn client_credentials_with_a_secret_in_basic_or_the_body() {
    let server = server().await;
    let basic = secret_client(&server, ClientAuthMethod::ClientSecretBasic);
    let response = http()
        .post(server.token_endpoint())
        .basic_auth(&basic.client_id, Some("s3cret"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "read"),
            ("resource", RESOURCE),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body.get("refresh_token").is_none(), "{body}");
    let info = server.introspect(str_of(&body, "access_token")).unwrap();
    assert_eq!(info.subject, basic.client_id, "the client is the subject");
    assert!(info.has_scope("read") && info.is_for(RESOURCE));

    let post = secret_client(&server, ClientAuthMethod::ClientSecretPost);
    let (status, body) = post_token(
        &server,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &post.client_id),
            ("client_secret", "s3cret"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_token(
        &server,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &post.client_id),
            ("client_secret", "wrong"),
        ],
    )
    .await;
    assert_eq!((status, str_of(&body, "error")), (401, "invalid_client"));
    assert_eq!(server.hits(Endpoint::ClientCredentialsGrant), 3);
}

#[tokio::test]
async fn a_public_client_cannot_use_client_credentials() {
    let server = server().await;
    let client = public_client(&server);
    let (status, body) = post_token(
        &server,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &client.client_id),
        ],
    )
    .await;
    assert_eq!(
        (status, str_of(&body, "error")),
        (400, "unauthorized_client")
    );
}

#[tokio::test]
async fn private_key_jwt_assertions_are_checked() {
    let server = server().await;
    let key = SigningKey::generate_es256();
    let client = server
        .register_client(ClientRegistration::private_key_jwt(key.public_jwk()).client_id("bot"))
        .unwrap();
    let token_url = server.token_endpoint().to_string();
    let grant = |assertion: String| {
        let server = &server;
        async move {
            post_token(
                server,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                    ("client_assertion", &assertion),
                ],
            )
            .await
        }
    };

    // Addressed to the issuer, or to the token endpoint (RFC 7523).
    let good = assertion(&key, "bot", server.issuer(), now() + 60);
    let (status, body) = grant(good.clone()).await;
    assert_eq!(status, 200, "{body}");
    let info = server.introspect(str_of(&body, "access_token")).unwrap();
    assert_eq!(info.client_id, client.client_id);
    let (status, _) = grant(assertion(&key, "bot", &token_url, now() + 60)).await;
    assert_eq!(status, 200);

    let refused = |body: &Value, needle: &str| {
        assert_eq!(str_of(body, "error"), "invalid_client", "{body}");
        assert!(
            str_of(body, "error_description").contains(needle),
            "{needle}: {body}"
        );
    };
    // The same assertion twice: a replay.
    let (status, body) = grant(good).await;
    assert_eq!(status, 401);
    refused(&body, "replay");
    // Signed by another key.
    let other = SigningKey::generate_es256();
    let (status, body) = grant(assertion(&other, "bot", server.issuer(), now() + 60)).await;
    assert_eq!(status, 401);
    refused(&body, "signature");
    // For another server.
    let (_, body) = grant(assertion(
        &key,
        "bot",
        "https://elsewhere.example",
        now() + 60,
    ))
    .await;
    refused(&body, "aud");
    // Expired.
    let (_, body) = grant(assertion(&key, "bot", server.issuer(), now() - 5)).await;
    refused(&body, "expired");
    // Another client's id with this client's key.
    let (_, body) = grant(assertion(&key, "not-bot", server.issuer(), now() + 60)).await;
    refused(&body, "unknown client");
    // A wrong assertion type.
    let (status, body) = post_token(
        &server,
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", "urn:example:other"),
            (
                "client_assertion",
                &assertion(&key, "bot", server.issuer(), now() + 60),
            ),
        ],
    )
    .await;
    assert_eq!((status, str_of(&body, "error")), (401, "invalid_client"));
}

#[tokio::test]
async fn rsa_keys_sign_assertions_too() {
    let server = server().await;
    let key = SigningKey::generate_rs256();
    server
        .register_client(ClientRegistration::private_key_jwt(key.public_jwk()).client_id("rsa"))
        .unwrap();
    let (status, body) = post_token(
        &server,
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE),
            (
                "client_assertion",
                &assertion(&key, "rsa", server.issuer(), now() + 60),
            ),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_grant_the_server_does_not_offer_is_refused_and_not_advertised() {
    let server = server().await;
    let client = secret_client(&server, ClientAuthMethod::ClientSecretPost);
    server.update_settings(|s| {
        s.grant_types_supported
            .retain(|g| g != "client_credentials")
    });
    let (_, metadata) = get_json(&server.metadata_url()).await;
    let advertised = metadata["grant_types_supported"].as_array().unwrap();
    assert!(!advertised.iter().any(|g| g == "client_credentials"));
    let (status, body) = post_token(
        &server,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", &client.client_id),
            ("client_secret", "s3cret"),
        ],
    )
    .await;
    assert_eq!(
        (status, str_of(&body, "error")),
        (400, "unsupported_grant_type")
    );
}

/// An identity provider, an MCP authorization server that trusts it, the
/// client at each, and the user's ID token.
struct Enterprise {
    idp: TestAuthServer,
    auth: TestAuthServer,
    idp_client: RegisteredClient,
    id_token: String,
}

async fn enterprise() -> Enterprise {
    let idp = server().await;
    let auth = server().await;
    auth.trust_identity_provider(&idp);
    auth.register_client(
        ClientRegistration::service(ClientAuthMethod::ClientSecretBasic)
            .client_id("xaa-client")
            .client_secret("xaa-secret"),
    )
    .unwrap();
    let idp_client = idp
        .register_client(
            ClientRegistration::service(ClientAuthMethod::None)
                .client_id("idp-client")
                .id_jag_client_id("xaa-client"),
        )
        .unwrap();
    let id_token = idp.issue_id_token("alice", "idp-client");
    Enterprise {
        idp,
        auth,
        idp_client,
        id_token,
    }
}

impl Enterprise {
    async fn exchange(&self, audience: &str, id_token: &str) -> (u16, Value) {
        post_token(
            &self.idp,
            &[
                ("grant_type", TOKEN_EXCHANGE_GRANT),
                ("client_id", &self.idp_client.client_id),
                ("requested_token_type", ID_JAG_TOKEN_TYPE),
                ("subject_token_type", ID_TOKEN_TYPE),
                ("subject_token", id_token),
                ("audience", audience),
                ("resource", RESOURCE),
                ("scope", "notes:read"),
            ],
        )
        .await
    }

    async fn id_jag(&self) -> String {
        let (status, body) = self.exchange(self.auth.issuer(), &self.id_token).await;
        assert_eq!(status, 200, "{body}");
        str_of(&body, "access_token").to_owned()
    }

    async fn jwt_bearer(&self, assertion: &str) -> (u16, Value) {
        let response = http()
            .post(self.auth.token_endpoint())
            .basic_auth("xaa-client", Some("xaa-secret"))
            .form(&[
                ("grant_type", JWT_BEARER_GRANT),
                ("assertion", assertion),
                ("resource", RESOURCE),
            ])
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }
}

#[tokio::test]
async fn an_id_token_becomes_an_id_jag_then_an_access_token() {
    let world = enterprise().await;
    let (status, body) = world.exchange(world.auth.issuer(), &world.id_token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], ID_JAG_TOKEN_TYPE);
    assert_eq!(body["token_type"], "N_A");
    let jag = str_of(&body, "access_token");
    let claims = claims_of(jag);
    assert_eq!(claims["iss"], world.idp.issuer());
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], world.auth.issuer());
    assert_eq!(claims["client_id"], "xaa-client");
    assert_eq!(claims["resource"], RESOURCE);
    assert_eq!(claims["scope"], "notes:read");

    let (status, body) = world.jwt_bearer(jag).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("refresh_token").is_none(), "{body}");
    let info = world
        .auth
        .introspect(str_of(&body, "access_token"))
        .unwrap();
    assert_eq!(info.subject, "alice");
    assert_eq!(info.client_id, "xaa-client");
    assert!(info.is_for(RESOURCE) && info.has_scope("notes:read"));
    // One ID-JAG, one token: a replay is refused.
    let (status, body) = world.jwt_bearer(jag).await;
    assert_eq!((status, str_of(&body, "error")), (400, "invalid_grant"));
    assert!(str_of(&body, "error_description").contains("replay"));
    assert_eq!(world.auth.hits(Endpoint::JwtBearerGrant), 2);
    assert_eq!(world.idp.hits(Endpoint::TokenExchangeGrant), 1);
}

#[tokio::test]
async fn an_expired_id_jag_is_refused() {
    let world = enterprise().await;
    world
        .idp
        .update_settings(|s| s.id_jag_lifetime = Duration::ZERO);
    let jag = world.id_jag().await;
    let (status, body) = world.jwt_bearer(&jag).await;
    assert_eq!((status, str_of(&body, "error")), (400, "invalid_grant"));
    assert!(
        str_of(&body, "error_description").contains("expired"),
        "{body}"
    );
}

#[tokio::test]
async fn an_id_jag_for_another_audience_is_refused() {
    let world = enterprise().await;
    let (status, body) = world
        .exchange("https://other-as.example", &world.id_token)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = world.jwt_bearer(str_of(&body, "access_token")).await;
    assert_eq!((status, str_of(&body, "error")), (400, "invalid_grant"));
    assert!(
        str_of(&body, "error_description").contains("audience"),
        "{body}"
    );
}

#[tokio::test]
async fn an_id_jag_with_a_bad_signature_or_an_untrusted_issuer_is_refused() {
    let world = enterprise().await;
    let jag = world.id_jag().await;
    // The same claims, signed by a key the authorization server does not
    // trust for that issuer.
    let forged = SigningKey::generate_es256().sign(Some(ID_JAG_JWT_TYPE), &claims_of(&jag));
    let (status, body) = world.jwt_bearer(&forged).await;
    assert_eq!((status, str_of(&body, "error")), (400, "invalid_grant"));
    assert!(
        str_of(&body, "error_description").contains("signature"),
        "{body}"
    );
    // An identity provider nobody trusts.
    let stranger = server().await;
    stranger
        .register_client(
            ClientRegistration::service(ClientAuthMethod::None)
                .client_id("idp-client")
                .id_jag_client_id("xaa-client"),
        )
        .unwrap();
    let stranger_world = Enterprise {
        id_token: stranger.issue_id_token("alice", "idp-client"),
        idp_client: stranger.client("idp-client").unwrap(),
        idp: stranger,
        auth: world.auth,
    };
    let jag = stranger_world.id_jag().await;
    let (_, body) = stranger_world.jwt_bearer(&jag).await;
    assert!(
        str_of(&body, "error_description").contains("not trusted"),
        "{body}"
    );
}

#[tokio::test]
async fn the_identity_provider_checks_the_id_token() {
    let world = enterprise().await;
    // Issued to another client.
    let theirs = world.idp.issue_id_token("alice", "someone-else");
    let (status, body) = world.exchange(world.auth.issuer(), &theirs).await;
    assert_eq!((status, str_of(&body, "error")), (400, "invalid_grant"));
    // Expired.
    world
        .idp
        .update_settings(|s| s.id_token_lifetime = Duration::ZERO);
    let expired = world.idp.issue_id_token("alice", "idp-client");
    let (_, body) = world.exchange(world.auth.issuer(), &expired).await;
    assert!(str_of(&body, "error_description").contains("expired"));
    // Not a token-exchange for an ID-JAG.
    let (status, body) = post_token(
        &world.idp,
        &[
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("client_id", "idp-client"),
            (
                "requested_token_type",
                "urn:ietf:params:oauth:token-type:access_token",
            ),
            ("subject_token_type", ID_TOKEN_TYPE),
            ("subject_token", &world.id_token),
            ("audience", world.auth.issuer()),
        ],
    )
    .await;
    assert_eq!((status, str_of(&body, "error")), (400, "invalid_request"));
}

#[tokio::test]
async fn the_jwt_bearer_grant_is_refused_where_it_is_not_offered() {
    let world = enterprise().await;
    let jag = world.id_jag().await;
    world
        .auth
        .update_settings(|s| s.grant_types_supported.retain(|g| g != JWT_BEARER_GRANT));
    let (status, body) = world.jwt_bearer(&jag).await;
    assert_eq!(
        (status, str_of(&body, "error")),
        (400, "unsupported_grant_type")
    );
}

#[tokio::test]
async fn the_key_set_serves_the_signing_key() {
    let server = server().await;
    let (_, jwks) = get_json(&server.jwks_uri()).await;
    assert_eq!(jwks["keys"][0], server.signing_key().public_jwk());
    let id_token = server.issue_id_token("alice", "c1");
    assert_eq!(claims_of(&id_token)["aud"], "c1");
}

#[tokio::test]
async fn revocation_removes_the_token_and_its_grant() {
    let server = server().await;
    let client = public_client(&server);
    let tokens = crate::support::tokens_for(&server, &client).await;
    let access = str_of(&tokens, "access_token").to_owned();
    let refresh = str_of(&tokens, "refresh_token").to_owned();
    let (_, metadata) = get_json(&server.metadata_url()).await;
    assert_eq!(
        metadata["revocation_endpoint"],
        server.revocation_endpoint().as_str()
    );

    let revoke = |token: String, client_id: String| {
        let server = &server;
        async move {
            http()
                .post(server.revocation_endpoint())
                .form(&[
                    ("token", token.as_str()),
                    ("token_type_hint", "refresh_token"),
                    ("client_id", client_id.as_str()),
                ])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Another client cannot revoke it.
    let other = public_client(&server);
    assert_eq!(revoke(refresh.clone(), other.client_id.clone()).await, 400);
    assert!(server.introspect(&access).is_some());
    // The refresh token takes its access token with it.
    assert_eq!(revoke(refresh.clone(), client.client_id.clone()).await, 200);
    assert!(server.introspect(&access).is_none());
    let (status, _) = crate::support::refresh(&server, &client, &refresh, &[]).await;
    assert_eq!(status, 400);
    // Unknown tokens: 200 (RFC 7009 section 2.2).
    assert_eq!(
        revoke("nonsense".into(), client.client_id.clone()).await,
        200
    );
    assert_eq!(server.hits(Endpoint::Revocation), 3);
}
