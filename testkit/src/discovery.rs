//! Discovery documents (RFC 8414 and OpenID Connect), their defects, and
//! the documents hosted on the other origin.

use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::{Value, json};

use crate::authorize::WRONG_ISSUER;
use crate::failure::Endpoint;
use crate::http::{found, json, malformed_json, plain_status};
use crate::requests::RecordedRequest;
use crate::server::{Origin, Shared};
use crate::settings::{IssParameter, MetadataFault};
use crate::state::State as ServerState;

#[derive(Clone, Copy)]
enum Document {
    OAuth,
    OpenIdInserted,
    OpenIdAppended,
}

pub(crate) async fn oauth_metadata(
    state: State<Arc<Shared>>,
    origin: Extension<Origin>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    serve(state, origin, method, uri, headers, Document::OAuth).await
}

pub(crate) async fn openid_configuration(
    state: State<Arc<Shared>>,
    origin: Extension<Origin>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    serve(
        state,
        origin,
        method,
        uri,
        headers,
        Document::OpenIdInserted,
    )
    .await
}

pub(crate) async fn openid_configuration_appended(
    state: State<Arc<Shared>>,
    origin: Extension<Origin>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    serve(
        state,
        origin,
        method,
        uri,
        headers,
        Document::OpenIdAppended,
    )
    .await
}

async fn serve(
    State(shared): State<Arc<Shared>>,
    Extension(origin): Extension<Origin>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    document: Document,
) -> Response {
    let endpoint = match document {
        Document::OAuth => Endpoint::AuthorizationServerMetadata,
        Document::OpenIdInserted | Document::OpenIdAppended => Endpoint::OpenIdConfiguration,
    };
    let failure = shared.begin(RecordedRequest::new(endpoint, &method, &uri, &headers));
    if let Some(answer) = shared.injected_json_failure(failure).await {
        return answer;
    }
    let (served, fault, body) = {
        let state = shared.lock();
        let discovery = state.settings.discovery;
        let served = match document {
            Document::OAuth => discovery.serves_oauth(),
            Document::OpenIdInserted => discovery.serves_openid_inserted(!shared.prefix.is_empty()),
            Document::OpenIdAppended => discovery.serves_openid_appended(),
        };
        (
            served,
            state.settings.metadata_fault,
            metadata(&shared, &state),
        )
    };
    if !served {
        return plain_status(
            StatusCode::NOT_FOUND,
            "this discovery document is not served",
        );
    }
    match fault {
        Some(MetadataFault::CrossOriginRedirect) if origin == Origin::Main => {
            let mut target = shared.other_base.clone();
            target.set_path(uri.path());
            found(&target)
        }
        Some(MetadataFault::MalformedJson) => malformed_json(),
        _ => json(StatusCode::OK, &body),
    }
}

/// The document both discovery formats share, with the configured defect
/// and patch applied.
fn metadata(shared: &Shared, state: &ServerState) -> Value {
    let settings = &state.settings;
    let mut challenge_methods = vec!["S256"];
    if settings.allow_plain_pkce {
        challenge_methods.push("plain");
    }
    let auth_methods: Vec<&str> = settings
        .token_endpoint_auth_methods
        .iter()
        .map(|m| m.as_str())
        .collect();
    let mut doc = json!({
        "issuer": shared.issuer,
        "authorization_endpoint": shared.endpoint("/authorize").as_str(),
        "token_endpoint": shared.endpoint("/token").as_str(),
        "userinfo_endpoint": shared.endpoint("/userinfo").as_str(),
        "jwks_uri": shared.endpoint("/jwks").as_str(),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": settings.grant_types_supported,
        "code_challenge_methods_supported": challenge_methods,
        "token_endpoint_auth_methods_supported": auth_methods,
        "authorization_response_iss_parameter_supported":
            settings.iss_parameter != IssParameter::Omitted,
        "client_id_metadata_document_supported": settings.client_id_metadata_documents,
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    });
    if settings
        .token_endpoint_auth_methods
        .contains(&crate::ClientAuthMethod::PrivateKeyJwt)
    {
        doc["token_endpoint_auth_signing_alg_values_supported"] =
            json!(["ES256", "ES384", "RS256", "PS256", "EdDSA"]);
    }
    if settings.revocation {
        doc["revocation_endpoint"] = json!(shared.endpoint("/revoke").as_str());
        doc["revocation_endpoint_auth_methods_supported"] = json!(auth_methods);
    }
    if settings.dynamic_registration {
        doc["registration_endpoint"] = json!(shared.endpoint("/register").as_str());
    }
    if settings.introspection {
        doc["introspection_endpoint"] = json!(shared.endpoint("/introspect").as_str());
        doc["introspection_endpoint_auth_methods_supported"] = json!(["none"]);
    }
    if let Some(scopes) = &settings.scopes_supported {
        doc["scopes_supported"] = json!(scopes);
    }
    match settings.metadata_fault {
        Some(MetadataFault::NoCodeChallengeMethods) => {
            if let Some(map) = doc.as_object_mut() {
                map.remove("code_challenge_methods_supported");
            }
        }
        Some(MetadataFault::PlainPkceOnly) => {
            doc["code_challenge_methods_supported"] = json!(["plain"]);
        }
        Some(MetadataFault::WrongIssuer) => doc["issuer"] = json!(WRONG_ISSUER),
        _ => {}
    }
    if let Some(patch) = &state.metadata_patch {
        patch(&mut doc);
    }
    doc
}

/// Everything else: documents from `host_json` on the other origin, `404`
/// elsewhere.
pub(crate) async fn fallback(
    State(shared): State<Arc<Shared>>,
    Extension(origin): Extension<Origin>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let not_found = || plain_status(StatusCode::NOT_FOUND, "no such endpoint on the test server");
    if origin != Origin::Other || method != Method::GET {
        return not_found();
    }
    let failure = shared.begin(RecordedRequest::new(
        Endpoint::HostedDocument,
        &method,
        &uri,
        &headers,
    ));
    if let Some(answer) = shared.injected_json_failure(failure).await {
        return answer;
    }
    let document = shared.lock().hosted.get(uri.path()).cloned();
    match document {
        Some(document) => json(StatusCode::OK, &document),
        None => not_found(),
    }
}
