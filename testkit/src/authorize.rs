//! `/authorize` and the consent step.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use url::Url;

use crate::cimd;
use crate::client::{ClientSource, RegisteredClient};
use crate::failure::Endpoint;
use crate::http::{Params, absolute_uri, escape_html, found, html, split_scopes};
use crate::pkce::{self, ChallengeMethod};
use crate::requests::RecordedRequest;
use crate::server::Shared;
use crate::settings::{ConsentMode, IssParameter};
use crate::state::{Approval, Grant};
use crate::tokens::PendingConsent;

/// The request header that names the signed-in user for one authorization
/// request (it wins over [`USER_QUERY_PARAM`]).
pub const USER_HEADER: &str = "x-test-user";

/// The `/authorize` query parameter that names the signed-in user for one
/// request, when [`USER_HEADER`] is absent.
pub const USER_QUERY_PARAM: &str = "test_user";

/// The issuer that [`IssParameter::Wrong`] and
/// [`MetadataFault::WrongIssuer`](crate::MetadataFault::WrongIssuer) send.
pub const WRONG_ISSUER: &str = "https://wrong-issuer.invalid";

/// How an authorization ends for the client.
pub(crate) enum RedirectOutcome {
    Code(String),
    Error { error: String, description: String },
}

impl RedirectOutcome {
    pub(crate) fn error(error: &str, description: impl Into<String>) -> Self {
        RedirectOutcome::Error {
            error: error.to_owned(),
            description: description.into(),
        }
    }

    pub(crate) fn denied() -> Self {
        Self::error("access_denied", "the user denied the request")
    }
}

/// The redirect URI with the response parameters (RFC 6749 section 4.1.2,
/// RFC 9207 `iss` on success and error alike).
pub(crate) fn redirect_url(
    shared: &Shared,
    iss: IssParameter,
    redirect_uri: &str,
    state: Option<&str>,
    outcome: &RedirectOutcome,
) -> Result<Url, String> {
    let mut url = absolute_uri(redirect_uri)?;
    {
        let mut query = url.query_pairs_mut();
        match outcome {
            RedirectOutcome::Code(code) => {
                query.append_pair("code", code);
            }
            RedirectOutcome::Error { error, description } => {
                query.append_pair("error", error);
                query.append_pair("error_description", description);
            }
        }
        if let Some(state) = state {
            query.append_pair("state", state);
        }
        match iss {
            IssParameter::Correct => {
                query.append_pair("iss", &shared.issuer);
            }
            IssParameter::Wrong => {
                query.append_pair("iss", WRONG_ISSUER);
            }
            IssParameter::Omitted => {}
        }
    }
    Ok(url)
}

/// A `400` page: the client or redirect URI cannot be trusted, so the
/// browser is never sent anywhere (RFC 6749 section 4.1.2.1).
fn error_page(message: &str) -> Response {
    html(
        StatusCode::BAD_REQUEST,
        "Authorization error",
        &format!("<p id=\"error\">{}</p>", escape_html(message)),
    )
}

/// Where validation errors go once the redirect URI is trusted.
struct Reply<'a> {
    shared: &'a Shared,
    redirect_uri: String,
    state: Option<String>,
}

impl Reply<'_> {
    fn send(&self, outcome: &RedirectOutcome) -> Response {
        let iss = self.shared.lock().settings.iss_parameter;
        match redirect_url(
            self.shared,
            iss,
            &self.redirect_uri,
            self.state.as_deref(),
            outcome,
        ) {
            Ok(url) => found(&url),
            Err(reason) => error_page(&reason),
        }
    }

    fn error(&self, error: &str, description: impl Into<String>) -> Response {
        self.send(&RedirectOutcome::error(error, description))
    }
}

pub(crate) async fn authorize(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let params = Params::parse(uri.query().unwrap_or("").as_bytes());
    let failure = shared.begin(RecordedRequest::new(
        Endpoint::Authorize,
        &method,
        &uri,
        &headers,
    ));
    let injected = match shared.run_failure(failure).await {
        Ok(injected) => injected,
        Err(response) => return response,
    };

    // Until the client and its redirect URI are verified, errors are pages.
    let client_id = match params.single("client_id") {
        Ok(Some(id)) => id,
        Ok(None) => return error_page("client_id is missing"),
        Err(_) => return error_page("client_id was sent more than once"),
    };
    let client = match resolve_client(&shared, client_id).await {
        Ok(client) => client,
        Err(message) => return error_page(&message),
    };
    let loopback_any_port = shared.lock().settings.loopback_redirect_any_port;
    let (redirect_uri, redirect_uri_sent) = match params.single("redirect_uri") {
        Err(_) => return error_page("redirect_uri was sent more than once"),
        Ok(Some(requested)) => {
            if client
                .matching_redirect(requested, loopback_any_port)
                .is_none()
            {
                return error_page(&unregistered_redirect(&client, requested));
            }
            (requested.to_owned(), Some(requested.to_owned()))
        }
        Ok(None) if client.redirect_uris.len() == 1 => (client.redirect_uris[0].clone(), None),
        Ok(None) => {
            return error_page(
                "redirect_uri is required: the client has no single registered redirect URI",
            );
        }
    };

    let reply = Reply {
        shared: &shared,
        redirect_uri: redirect_uri.clone(),
        state: params.single("state").ok().flatten().map(str::to_owned),
    };
    if params.single("state").is_err() {
        return reply.error("invalid_request", "state was sent more than once");
    }
    let (grant, challenge) = match validate(&shared, &params, &headers, &client) {
        Ok(checked) => checked,
        Err((error, description)) => return reply.error(error, description),
    };
    if let Some(error) = injected {
        return reply.error(&error, "injected failure");
    }
    let approval = Approval {
        grant,
        redirect_uri,
        redirect_uri_sent,
        state: reply.state.clone(),
        challenge,
    };

    let mut state = shared.lock();
    match state.settings.consent {
        ConsentMode::Auto => {
            let code = state.issue_code(approval);
            drop(state);
            reply.send(&RedirectOutcome::Code(code))
        }
        ConsentMode::Deny => {
            drop(state);
            reply.send(&RedirectOutcome::denied())
        }
        ConsentMode::Page => {
            let pending = state.add_consent(approval);
            drop(state);
            consent_page(&shared, &client, &pending)
        }
    }
}

type Checked = (Grant, Option<(String, ChallengeMethod)>);

/// Checks everything after the client and redirect URI; an error is an
/// OAuth error code and description for the redirect.
fn validate(
    shared: &Shared,
    params: &Params,
    headers: &HeaderMap,
    client: &RegisteredClient,
) -> Result<Checked, (&'static str, String)> {
    let single = |name: &'static str| {
        params
            .single(name)
            .map_err(|_| ("invalid_request", format!("{name} was sent more than once")))
    };
    let settings = shared.lock().settings.clone();

    match single("response_type")? {
        Some("code") => {}
        Some(other) => {
            return Err((
                "unsupported_response_type",
                format!("response_type {other:?} is not supported; use code"),
            ));
        }
        None => return Err(("invalid_request", "response_type is missing".to_owned())),
    }

    let challenge = match (single("code_challenge")?, single("code_challenge_method")?) {
        (None, None) if !settings.require_pkce => None,
        (None, _) => {
            return Err((
                "invalid_request",
                "code_challenge is required (PKCE with S256)".to_owned(),
            ));
        }
        (Some(challenge), method) => {
            let method = match method {
                Some("S256") => ChallengeMethod::S256,
                Some("plain") | None if settings.allow_plain_pkce => ChallengeMethod::Plain,
                Some("plain") | None => {
                    return Err((
                        "invalid_request",
                        "code_challenge_method must be S256 (plain is not accepted)".to_owned(),
                    ));
                }
                Some(other) => {
                    return Err((
                        "invalid_request",
                        format!("code_challenge_method {other:?} is not supported; use S256"),
                    ));
                }
            };
            if !pkce::is_well_formed(challenge) {
                return Err((
                    "invalid_request",
                    "code_challenge must be 43 to 128 unreserved characters".to_owned(),
                ));
            }
            Some((challenge.to_owned(), method))
        }
    };

    let requested = single("scope")?.map(split_scopes).unwrap_or_default();
    let scopes = crate::grants::scopes_to_grant(&settings, requested)
        .map_err(|reason| ("invalid_scope", reason))?;

    let resources = params.all("resource");
    for resource in &resources {
        absolute_uri(resource).map_err(|reason| ("invalid_target", reason))?;
    }
    if resources.is_empty() && settings.require_resource {
        return Err((
            "invalid_target",
            "resource is required (RFC 8707): name the protected resource".to_owned(),
        ));
    }

    let subject = headers
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            params
                .single(USER_QUERY_PARAM)
                .ok()
                .flatten()
                .map(str::to_owned)
        })
        .unwrap_or(settings.default_subject);

    Ok((
        Grant {
            client_id: client.client_id.clone(),
            subject,
            scopes,
            resources,
        },
        challenge,
    ))
}

/// The client for `client_id`: registered, or, for a URL, from its Client
/// ID Metadata Document (fetched again on every authorization request so
/// a test sees each fetch).
async fn resolve_client(shared: &Shared, client_id: &str) -> Result<RegisteredClient, String> {
    let (known, documents_enabled) = {
        let state = shared.lock();
        (
            state.clients.get(client_id).cloned(),
            state.settings.client_id_metadata_documents,
        )
    };
    let fetched_before = known
        .as_ref()
        .is_some_and(|c| c.source == ClientSource::MetadataDocument);
    if cimd::is_url_client_id(client_id) && (known.is_none() || fetched_before) {
        if !documents_enabled {
            return Err(format!(
                "unknown client_id {client_id:?}: Client ID Metadata Documents are disabled on \
                 this server"
            ));
        }
        let client = cimd::fetch_client(shared, client_id).await?;
        shared
            .lock()
            .clients
            .insert(client.client_id.clone(), client.clone());
        return Ok(client);
    }
    known.ok_or_else(|| format!("unknown client_id {client_id:?}"))
}

fn unregistered_redirect(client: &RegisteredClient, requested: &str) -> String {
    let registered = match client.source {
        ClientSource::MetadataDocument => "listed in its Client ID Metadata Document",
        _ => "registered",
    };
    format!(
        "redirect_uri {requested:?} is not {registered} for client {:?} (it has: {})",
        client.client_id,
        client.redirect_uris.join(", ")
    )
}

fn consent_page(shared: &Shared, client: &RegisteredClient, pending: &PendingConsent) -> Response {
    let list = |items: &[String]| {
        if items.is_empty() {
            "(none)".to_owned()
        } else {
            escape_html(&items.join(" "))
        }
    };
    let body = format!(
        "<p><b id=\"client\">{client}</b> asks for access as <b id=\"subject\">{subject}</b>.</p>\n\
         <p>Scopes: <span id=\"scopes\">{scopes}</span></p>\n\
         <p>Resources: <span id=\"resources\">{resources}</span></p>\n\
         <form method=\"post\" action=\"{action}\">\n\
         <input type=\"hidden\" name=\"consent_id\" value=\"{id}\">\n\
         <button type=\"submit\" name=\"decision\" value=\"approve\">Approve</button>\n\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\n\
         </form>",
        client = escape_html(client.name.as_deref().unwrap_or(&client.client_id)),
        subject = escape_html(&pending.subject),
        scopes = list(&pending.scopes),
        resources = list(&pending.resources),
        action = escape_html(shared.endpoint("/consent").as_str()),
        id = escape_html(&pending.id),
    );
    html(StatusCode::OK, "Authorize access", &body)
}

/// `POST /consent`: the consent page's form.
pub(crate) async fn consent(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = Params::parse(&body);
    let failure = shared
        .begin(RecordedRequest::new(Endpoint::Consent, &method, &uri, &headers).form(&params));
    let injected = match shared.run_failure(failure).await {
        Ok(injected) => injected,
        Err(response) => return response,
    };
    let Ok(Some(id)) = params.single("consent_id") else {
        return error_page("consent_id is missing");
    };
    let approve = match params.single("decision") {
        Ok(Some("approve")) => injected.is_none(),
        Ok(Some("deny")) => false,
        _ => return error_page("decision must be approve or deny"),
    };
    let mut state = shared.lock();
    let Some(approval) = state.take_consent(id) else {
        return error_page("this consent is unknown or was already decided");
    };
    let iss = state.settings.iss_parameter;
    let outcome = match (approve, injected) {
        (true, _) => RedirectOutcome::Code(state.issue_code(approval.clone())),
        (false, Some(error)) => RedirectOutcome::error(&error, "injected failure"),
        (false, None) => RedirectOutcome::denied(),
    };
    drop(state);
    match redirect_url(
        &shared,
        iss,
        &approval.redirect_uri,
        approval.state.as_deref(),
        &outcome,
    ) {
        Ok(url) => found(&url),
        Err(reason) => error_page(&reason),
    }
}
