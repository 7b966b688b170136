//! `POST /register`: dynamic client registration (RFC 7591).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::client::{ClientAuthMethod, ClientRegistration, ClientSource};
use crate::failure::Endpoint;
use crate::http::{OAuthFailure, json, plain_status};
use crate::requests::RecordedRequest;
use crate::server::Shared;

pub(crate) async fn register(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let document: Option<Value> = serde_json::from_slice(&body).ok();
    let failure = shared.begin(
        RecordedRequest::new(Endpoint::Registration, &method, &uri, &headers)
            .json(document.clone()),
    );
    if !shared.lock().settings.dynamic_registration {
        return plain_status(
            StatusCode::NOT_FOUND,
            "dynamic client registration is disabled on this server",
        );
    }
    if let Some(answer) = shared.injected_json_failure(failure).await {
        return answer;
    }
    match register_client(&shared, document) {
        Ok(body) => json(StatusCode::CREATED, &body),
        Err(failure) => failure.into_response(),
    }
}

fn metadata_error(description: impl Into<String>) -> OAuthFailure {
    OAuthFailure::new("invalid_client_metadata", description)
}

fn register_client(shared: &Shared, document: Option<Value>) -> Result<Value, OAuthFailure> {
    let Some(Value::Object(request)) = document else {
        return Err(metadata_error("the body must be a JSON object"));
    };
    let strings = |name: &str| -> Result<Option<Vec<String>>, OAuthFailure> {
        match request.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.as_str().map(str::to_owned).ok_or_else(|| {
                        metadata_error(format!("{name} must be an array of strings"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(metadata_error(format!(
                "{name} must be an array of strings"
            ))),
        }
    };

    let method_name = match request.get("token_endpoint_auth_method") {
        None => "client_secret_basic",
        Some(Value::String(name)) => name.as_str(),
        Some(_) => {
            return Err(metadata_error(
                "token_endpoint_auth_method must be a string",
            ));
        }
    };
    let advertised = shared.lock().settings.token_endpoint_auth_methods.clone();
    let method = ClientAuthMethod::from_name(method_name)
        .filter(|m| advertised.contains(m))
        .ok_or_else(|| {
            metadata_error(format!(
                "token_endpoint_auth_method {method_name:?} is not supported; use one of {}",
                advertised
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let grant_types = strings("grant_types")?
        .unwrap_or_else(|| vec!["authorization_code".to_owned(), "refresh_token".to_owned()]);
    let supported = shared.lock().settings.grant_types_supported.clone();
    if let Some(other) = grant_types.iter().find(|g| !supported.contains(g)) {
        return Err(metadata_error(format!(
            "grant type {other:?} is not supported"
        )));
    }
    // Redirect URIs are for the authorization code grant only; a client
    // for the grants without a user registers none.
    let uses_redirects = grant_types.iter().any(|g| g == "authorization_code");
    let redirect_uris = strings("redirect_uris")?.unwrap_or_default();
    if redirect_uris.is_empty() && uses_redirects {
        return Err(OAuthFailure::new(
            "invalid_redirect_uri",
            "redirect_uris is required for the authorization code grant",
        ));
    }
    let jwk = match method {
        ClientAuthMethod::PrivateKeyJwt => Some(
            request
                .get("jwks")
                .and_then(|jwks| jwks.get("keys"))
                .and_then(|keys| keys.get(0))
                .cloned()
                .ok_or_else(|| {
                    metadata_error("private_key_jwt needs the client's public key in jwks")
                })?,
        ),
        _ => None,
    };
    let response_types = strings("response_types")?.unwrap_or_else(|| vec!["code".to_owned()]);
    if let Some(other) = response_types.iter().find(|r| *r != "code") {
        return Err(metadata_error(format!(
            "response type {other:?} is not supported"
        )));
    }

    let mut registration = ClientRegistration::service(method);
    for uri in &redirect_uris {
        registration = registration.redirect_uri(uri.clone());
    }
    if let Some(jwk) = jwk {
        registration = registration.jwk(jwk);
    }
    if let Some(Value::String(name)) = request.get("client_name") {
        registration = registration.name(name.clone());
    }
    let mut client = registration
        .into_client(ClientSource::Dynamic)
        .map_err(|e| match method {
            // The key did not parse.
            ClientAuthMethod::PrivateKeyJwt => metadata_error(e.to_string()),
            _ => OAuthFailure::new("invalid_redirect_uri", e.to_string()),
        })?;
    let now = SystemTime::now();
    {
        let mut state = shared.lock();
        if client.client_secret.is_some() {
            client.secret_expires_at = state.settings.client_secret_lifetime.map(|ttl| now + ttl);
        }
        state
            .clients
            .insert(client.client_id.clone(), client.clone());
    }

    // RFC 7591 section 3.2.1: all registered metadata, including fields this
    // server does not interpret, plus the issued credentials.
    let mut response: Map<String, Value> = request;
    let unix = |at: SystemTime| at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    response.insert("client_id".into(), client.client_id.clone().into());
    response.insert("client_id_issued_at".into(), unix(now).into());
    if let Some(secret) = &client.client_secret {
        response.insert("client_secret".into(), secret.clone().into());
        // 0: the secret never expires (RFC 7591 section 3.2.1).
        let expires_at = client.secret_expires_at.map_or(0, unix);
        response.insert("client_secret_expires_at".into(), expires_at.into());
    }
    response.insert("redirect_uris".into(), redirect_uris.into());
    response.insert("token_endpoint_auth_method".into(), method.as_str().into());
    response.insert("grant_types".into(), grant_types.into());
    response.insert("response_types".into(), response_types.into());
    Ok(Value::Object(response))
}
