//! The server's memory: clients, codes, tokens, consents, counters and the
//! failure queue. Everything here runs under one lock and never awaits.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::client::{ClientAuthMethod, ClientSource, RegisteredClient};
use crate::failure::{Endpoint, Failure};
use crate::http::OAuthFailure;
use crate::keys::PublicKey;
use crate::pkce::{self, ChallengeMethod};
use crate::requests::RecordedRequest;
use crate::secret::random_token;
use crate::settings::Settings;
use crate::tokens::{IssuedTokens, PendingConsent, TokenInfo};

/// A function that edits every discovery document before it is served.
pub(crate) type MetadataPatch = Arc<dyn Fn(&mut Value) + Send + Sync>;

/// What the user authorized.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    pub(crate) client_id: String,
    pub(crate) subject: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) resources: Vec<String>,
}

/// A validated authorization request, before or after consent.
#[derive(Debug, Clone)]
pub(crate) struct Approval {
    pub(crate) grant: Grant,
    /// The registered redirect URI that matched (or the only one).
    pub(crate) redirect_uri: String,
    /// The redirect URI as the request sent it, if it did: the token
    /// request must then repeat it.
    pub(crate) redirect_uri_sent: Option<String>,
    pub(crate) state: Option<String>,
    pub(crate) challenge: Option<(String, ChallengeMethod)>,
}

struct CodeEntry {
    approval: Approval,
    family: u64,
    expires_at: SystemTime,
    used: bool,
}

struct AccessEntry {
    info: TokenInfo,
    family: u64,
}

struct RefreshEntry {
    grant: Grant,
    family: u64,
    expires_at: Option<SystemTime>,
}

struct ConsentEntry {
    seq: u64,
    approval: Approval,
}

/// What a token request asked for, once the client is authenticated.
pub(crate) struct CodeExchange<'a> {
    pub(crate) client_id: &'a str,
    pub(crate) code: &'a str,
    pub(crate) redirect_uri: Option<&'a str>,
    pub(crate) verifier: Option<&'a str>,
    pub(crate) resources: Vec<String>,
}

pub(crate) struct Refresh<'a> {
    pub(crate) client_id: &'a str,
    pub(crate) refresh_token: &'a str,
    pub(crate) scopes: Option<Vec<String>>,
    pub(crate) resources: Vec<String>,
}

pub(crate) struct State {
    pub(crate) settings: Settings,
    pub(crate) metadata_patch: Option<MetadataPatch>,
    pub(crate) clients: HashMap<String, RegisteredClient>,
    pub(crate) hosted: HashMap<String, Value>,
    pub(crate) client_metadata_fetches: u64,
    /// Identity providers whose ID-JAGs the jwt-bearer grant accepts.
    pub(crate) trusted_issuers: HashMap<String, PublicKey>,
    /// `jti`s of client assertions and ID-JAGs already used.
    used_jtis: HashSet<String>,
    codes: HashMap<String, CodeEntry>,
    access_tokens: HashMap<String, AccessEntry>,
    refresh_tokens: HashMap<String, RefreshEntry>,
    /// Rotated-away refresh tokens and their authorization, to detect reuse.
    rotated: HashMap<String, u64>,
    consents: HashMap<String, ConsentEntry>,
    failures: HashMap<Endpoint, VecDeque<Failure>>,
    hits: HashMap<Endpoint, u64>,
    requests: Vec<RecordedRequest>,
    next_family: u64,
    next_seq: u64,
}

impl State {
    pub(crate) fn new(settings: Settings, metadata_patch: Option<MetadataPatch>) -> Self {
        State {
            settings,
            metadata_patch,
            clients: HashMap::new(),
            hosted: HashMap::new(),
            client_metadata_fetches: 0,
            trusted_issuers: HashMap::new(),
            used_jtis: HashSet::new(),
            codes: HashMap::new(),
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            rotated: HashMap::new(),
            consents: HashMap::new(),
            failures: HashMap::new(),
            hits: HashMap::new(),
            requests: Vec::new(),
            next_family: 0,
            next_seq: 0,
        }
    }

    // --- counters, log and failures -------------------------------------

    /// Counts and logs a request, and takes the failure queued for it:
    /// the grant's queue before the endpoint's.
    pub(crate) fn begin(&mut self, request: RecordedRequest) -> Option<Failure> {
        let endpoints: Vec<Endpoint> = request
            .grant
            .into_iter()
            .chain(Some(request.endpoint))
            .collect();
        for endpoint in &endpoints {
            *self.hits.entry(*endpoint).or_default() += 1;
        }
        self.requests.push(request);
        endpoints
            .iter()
            .find_map(|endpoint| self.failures.get_mut(endpoint)?.pop_front())
    }

    pub(crate) fn hits(&self, endpoint: Endpoint) -> u64 {
        self.hits.get(&endpoint).copied().unwrap_or(0)
    }

    pub(crate) fn requests(&self, endpoint: Option<Endpoint>) -> Vec<RecordedRequest> {
        self.requests
            .iter()
            .filter(|r| endpoint.is_none_or(|e| r.is(e)))
            .cloned()
            .collect()
    }

    pub(crate) fn reset_counters(&mut self) {
        self.hits.clear();
        self.requests.clear();
        self.client_metadata_fetches = 0;
    }

    pub(crate) fn push_failures(&mut self, endpoint: Endpoint, times: usize, failure: Failure) {
        let queue = self.failures.entry(endpoint).or_default();
        queue.extend(std::iter::repeat_n(failure, times));
    }

    pub(crate) fn pending_failures(&self, endpoint: Endpoint) -> usize {
        self.failures.get(&endpoint).map_or(0, VecDeque::len)
    }

    pub(crate) fn clear_failures(&mut self) {
        self.failures.clear();
    }

    // --- authorization ----------------------------------------------------

    pub(crate) fn issue_code(&mut self, approval: Approval) -> String {
        let code = random_token("code_");
        let family = self.new_family();
        let expires_at = SystemTime::now() + self.settings.code_lifetime;
        self.codes.insert(
            code.clone(),
            CodeEntry {
                approval,
                family,
                expires_at,
                used: false,
            },
        );
        code
    }

    pub(crate) fn add_consent(&mut self, approval: Approval) -> PendingConsent {
        let id = random_token("consent_");
        self.next_seq += 1;
        let pending = pending_consent(&id, &approval);
        self.consents.insert(
            id,
            ConsentEntry {
                seq: self.next_seq,
                approval,
            },
        );
        pending
    }

    pub(crate) fn take_consent(&mut self, id: &str) -> Option<Approval> {
        self.consents.remove(id).map(|entry| entry.approval)
    }

    pub(crate) fn pending_consents(&self) -> Vec<PendingConsent> {
        let mut entries: Vec<(&String, &ConsentEntry)> = self.consents.iter().collect();
        entries.sort_by_key(|(_, entry)| entry.seq);
        entries
            .into_iter()
            .map(|(id, entry)| pending_consent(id, &entry.approval))
            .collect()
    }

    // --- token endpoint ---------------------------------------------------

    /// Finds the client and checks how it authenticated.
    pub(crate) fn authenticate(
        &self,
        client_id: &str,
        method: ClientAuthMethod,
        secret: Option<&str>,
    ) -> Result<(), OAuthFailure> {
        let Some(client) = self.clients.get(client_id) else {
            return Err(OAuthFailure::invalid_client(format!(
                "unknown client {client_id:?}"
            )));
        };
        if client.auth_method != method {
            return Err(OAuthFailure::invalid_client(format!(
                "the client is registered for {} but authenticated with {}",
                client.auth_method, method
            )));
        }
        if method.has_secret() && client.client_secret.as_deref() != secret {
            return Err(OAuthFailure::invalid_client("wrong client secret"));
        }
        if method.has_secret() && client.secret_expired_at(SystemTime::now()) {
            return Err(OAuthFailure::invalid_client(
                "the client secret has expired; register again",
            ));
        }
        Ok(())
    }

    pub(crate) fn exchange_code(
        &mut self,
        request: CodeExchange<'_>,
    ) -> Result<IssuedTokens, OAuthFailure> {
        let now = SystemTime::now();
        let Some(entry) = self.codes.get_mut(request.code) else {
            return Err(OAuthFailure::invalid_grant("unknown authorization code"));
        };
        if entry.used {
            // RFC 6749 section 4.1.2: a replayed code revokes what it gave.
            let family = entry.family;
            self.revoke_family(family);
            return Err(OAuthFailure::invalid_grant(
                "authorization code already used; the tokens issued for it are revoked",
            ));
        }
        if entry.expires_at <= now {
            return Err(OAuthFailure::invalid_grant("authorization code expired"));
        }
        let approval = &entry.approval;
        if approval.grant.client_id != request.client_id {
            return Err(OAuthFailure::invalid_grant(
                "authorization code was issued to another client",
            ));
        }
        match (&approval.redirect_uri_sent, request.redirect_uri) {
            (Some(sent), Some(given)) if sent == given => {}
            (Some(_), Some(_)) => {
                return Err(OAuthFailure::invalid_grant(
                    "redirect_uri differs from the authorization request's",
                ));
            }
            (Some(_), None) => {
                return Err(OAuthFailure::invalid_request(
                    "redirect_uri is required: the authorization request included one",
                ));
            }
            (None, Some(given)) if given != approval.redirect_uri => {
                return Err(OAuthFailure::invalid_grant(
                    "redirect_uri differs from the registered one",
                ));
            }
            (None, _) => {}
        }
        match (&approval.challenge, request.verifier) {
            (Some((challenge, method)), Some(verifier)) => {
                if !pkce::verify(challenge, *method, verifier) {
                    return Err(OAuthFailure::invalid_grant(
                        "PKCE verification failed: code_verifier does not match code_challenge",
                    ));
                }
            }
            (Some(_), None) => {
                return Err(OAuthFailure::invalid_request(
                    "code_verifier is required: the authorization request had a code_challenge",
                ));
            }
            (None, Some(_)) => {
                // OAuth 2.1 section 4.1.3: prevents a PKCE downgrade.
                return Err(OAuthFailure::invalid_request(
                    "code_verifier sent, but the authorization request had no code_challenge",
                ));
            }
            (None, None) => {}
        }
        let audience = narrow_resources(&approval.grant.resources, request.resources)?;
        entry.used = true;
        let grant = approval.grant.clone();
        let family = entry.family;
        let scopes = grant.scopes.clone();
        Ok(self.issue(&grant, scopes, audience, family, true))
    }

    pub(crate) fn refresh(&mut self, request: Refresh<'_>) -> Result<IssuedTokens, OAuthFailure> {
        let now = SystemTime::now();
        let Some(entry) = self.refresh_tokens.get(request.refresh_token) else {
            if let Some(&family) = self.rotated.get(request.refresh_token)
                && self.settings.revoke_on_refresh_token_reuse
            {
                self.revoke_family(family);
                return Err(OAuthFailure::invalid_grant(
                    "refresh token already rotated: reuse detected, every token of this \
                     authorization is revoked",
                ));
            }
            return Err(OAuthFailure::invalid_grant(
                "unknown, rotated or revoked refresh token",
            ));
        };
        if entry.expires_at.is_some_and(|at| at <= now) {
            self.refresh_tokens.remove(request.refresh_token);
            return Err(OAuthFailure::invalid_grant("refresh token expired"));
        }
        if entry.grant.client_id != request.client_id {
            return Err(OAuthFailure::invalid_grant(
                "refresh token was issued to another client",
            ));
        }
        let grant = entry.grant.clone();
        let family = entry.family;
        let scopes = match request.scopes {
            None => grant.scopes.clone(),
            Some(asked) => {
                if let Some(extra) = asked.iter().find(|s| !grant.scopes.contains(s)) {
                    return Err(OAuthFailure::new(
                        "invalid_scope",
                        format!("scope {extra:?} exceeds the original grant"),
                    ));
                }
                asked
            }
        };
        let audience = narrow_resources(&grant.resources, request.resources)?;
        let rotate = self.settings.rotate_refresh_tokens;
        if rotate {
            self.refresh_tokens.remove(request.refresh_token);
            self.rotated
                .insert(request.refresh_token.to_owned(), family);
        }
        Ok(self.issue(&grant, scopes, audience, family, rotate))
    }

    /// Whether `jti` (qualified by its issuer or client) is used for the
    /// first time; it is remembered either way.
    pub(crate) fn first_use_of_jti(&mut self, jti: &str) -> bool {
        self.used_jtis.insert(jti.to_owned())
    }

    /// Issues an access token for a grant without a user's authorization
    /// (`client_credentials`, `jwt-bearer`): no refresh token, since the
    /// client can ask again with the same grant.
    pub(crate) fn issue_without_refresh(&mut self, grant: Grant) -> IssuedTokens {
        let family = self.new_family();
        let scopes = grant.scopes.clone();
        let resources = grant.resources.clone();
        self.issue(&grant, scopes, resources, family, false)
    }

    /// RFC 7009: revokes `token` if it was issued to `client_id` (a refresh
    /// token with the access tokens of its authorization). `Ok(false)` for
    /// a token the server does not know; an error for another client's.
    pub(crate) fn revoke_for_client(
        &mut self,
        token: &str,
        client_id: &str,
    ) -> Result<bool, OAuthFailure> {
        let owner = self
            .access_tokens
            .get(token)
            .map(|e| (e.info.client_id.clone(), e.family, false))
            .or_else(|| {
                self.refresh_tokens
                    .get(token)
                    .map(|e| (e.grant.client_id.clone(), e.family, true))
            });
        let Some((owner, family, is_refresh)) = owner else {
            return Ok(false);
        };
        if owner != client_id {
            return Err(OAuthFailure::new(
                "unauthorized_client",
                "the token was issued to another client",
            ));
        }
        if is_refresh {
            self.revoke_family(family);
        } else {
            self.access_tokens.remove(token);
        }
        Ok(true)
    }

    /// Mints tokens for `grant`, as a new authorization would.
    pub(crate) fn mint(&mut self, grant: Grant) -> IssuedTokens {
        let family = self.new_family();
        let scopes = grant.scopes.clone();
        let resources = grant.resources.clone();
        self.issue(&grant, scopes, resources, family, true)
    }

    fn issue(
        &mut self,
        grant: &Grant,
        scopes: Vec<String>,
        resources: Vec<String>,
        family: u64,
        new_refresh_token: bool,
    ) -> IssuedTokens {
        let now = SystemTime::now();
        let lifetime = Duration::from_secs(self.settings.access_token_lifetime.as_secs());
        let info = TokenInfo {
            client_id: grant.client_id.clone(),
            subject: grant.subject.clone(),
            scopes,
            resources,
            issued_at: now,
            expires_at: now + lifetime,
        };
        let access_token = random_token("at_");
        self.access_tokens.insert(
            access_token.clone(),
            AccessEntry {
                info: info.clone(),
                family,
            },
        );
        let refresh_token = (new_refresh_token && self.settings.issue_refresh_tokens).then(|| {
            let token = random_token("rt_");
            let expires_at = self.settings.refresh_token_lifetime.map(|ttl| now + ttl);
            self.refresh_tokens.insert(
                token.clone(),
                RefreshEntry {
                    grant: grant.clone(),
                    family,
                    expires_at,
                },
            );
            token
        });
        IssuedTokens {
            access_token,
            refresh_token,
            expires_in: lifetime,
            info,
        }
    }

    fn new_family(&mut self) -> u64 {
        self.next_family += 1;
        self.next_family
    }

    // --- token state --------------------------------------------------------

    pub(crate) fn introspect(&self, access_token: &str) -> Option<TokenInfo> {
        let entry = self.access_tokens.get(access_token)?;
        (entry.info.expires_at > SystemTime::now()).then(|| entry.info.clone())
    }

    /// What RFC 7662 says about a refresh token: (grant, expiry).
    pub(crate) fn refresh_token_grant(
        &self,
        refresh_token: &str,
    ) -> Option<(Grant, Option<SystemTime>)> {
        let entry = self.refresh_tokens.get(refresh_token)?;
        if entry.expires_at.is_some_and(|at| at <= SystemTime::now()) {
            return None;
        }
        Some((entry.grant.clone(), entry.expires_at))
    }

    pub(crate) fn revoke_token(&mut self, token: &str) -> bool {
        self.access_tokens.remove(token).is_some() || self.refresh_tokens.remove(token).is_some()
    }

    pub(crate) fn revoke_subject(&mut self, subject: &str) -> usize {
        let before = self.access_tokens.len() + self.refresh_tokens.len();
        self.access_tokens.retain(|_, e| e.info.subject != subject);
        self.refresh_tokens
            .retain(|_, e| e.grant.subject != subject);
        before - self.access_tokens.len() - self.refresh_tokens.len()
    }

    pub(crate) fn expire_access_tokens(&mut self) -> usize {
        let now = SystemTime::now();
        let past = now - Duration::from_secs(1);
        let mut expired = 0;
        for entry in self.access_tokens.values_mut() {
            if entry.info.expires_at > now {
                entry.info.expires_at = past;
                expired += 1;
            }
        }
        expired
    }

    pub(crate) fn expire_client_secrets(&mut self) -> usize {
        let now = SystemTime::now();
        let past = now - Duration::from_secs(1);
        let mut expired = 0;
        for client in self.clients.values_mut() {
            if client.client_secret.is_some() && !client.secret_expired_at(now) {
                client.secret_expires_at = Some(past);
                expired += 1;
            }
        }
        expired
    }

    /// What a restart of a server that keeps everything in memory loses:
    /// every client it did not start with, and every code, token and
    /// pending consent. Settings, configured clients, hosted documents,
    /// queued failures, counters and the request log stay.
    pub(crate) fn restart(&mut self) -> usize {
        let before = self.clients.len();
        self.clients
            .retain(|_, client| client.source == ClientSource::Preregistered);
        self.codes.clear();
        self.access_tokens.clear();
        self.refresh_tokens.clear();
        self.rotated.clear();
        self.consents.clear();
        before - self.clients.len()
    }

    fn revoke_family(&mut self, family: u64) {
        self.access_tokens.retain(|_, e| e.family != family);
        self.refresh_tokens.retain(|_, e| e.family != family);
    }
}

/// The audience of a token request: the named resources, which must have
/// been authorized when the authorization named any (RFC 8707 section 2.2).
fn narrow_resources(
    authorized: &[String],
    requested: Vec<String>,
) -> Result<Vec<String>, OAuthFailure> {
    if requested.is_empty() {
        return Ok(authorized.to_vec());
    }
    if !authorized.is_empty()
        && let Some(extra) = requested.iter().find(|r| !authorized.contains(r))
    {
        return Err(OAuthFailure::new(
            "invalid_target",
            format!("resource {extra:?} was not part of the authorization"),
        ));
    }
    Ok(requested)
}

fn pending_consent(id: &str, approval: &Approval) -> PendingConsent {
    PendingConsent {
        id: id.to_owned(),
        client_id: approval.grant.client_id.clone(),
        subject: approval.grant.subject.clone(),
        scopes: approval.grant.scopes.clone(),
        resources: approval.grant.resources.clone(),
        redirect_uri: approval.redirect_uri.clone(),
        state: approval.state.clone(),
    }
}
