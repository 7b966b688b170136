//! Every field of a stored record is authenticated, not only the secret
//! ones: an edit of any clear field at rest is refused with an error naming
//! that field; fields of two writes cannot be mixed; and records of the
//! first release (envelope version 1) still read and are rewritten in the
//! current version.

use std::time::Duration;

use mcp_authkit_core::{
    Error, ExposeSecret, FlowOutcome, PendingFlow, PendingStore, SecretString, Timestamp, TokenKey,
    TokenRecord, TokenStore, codec,
};
use mcp_authkit_store_encrypted::{
    ENVELOPE_VERSION, EncryptedStore, EncryptionError, EncryptionKey, EnvelopeInfo, Keyring,
};
use mcp_authkit_store_memory::MemoryStore;

use crate::common::{encrypted, flow, keyring, record};

fn field_of(error: &Error) -> &'static str {
    match EncryptionError::find_in(error) {
        Some(EncryptionError::ClearFieldTampered { field }) => field,
        other => panic!("expected a clear-field tamper error, got {other:?} ({error})"),
    }
}

/// Each clear field of a token, edited in the backend, makes the token
/// unreadable with an error that names that field.
#[tokio::test]
async fn an_edited_clear_field_of_a_token_is_refused_and_named() {
    let (backend, store) = encrypted(keyring("k1", 1));
    type Edit = fn(&mut TokenRecord);
    let edits: [(&str, Edit); 7] = [
        ("token_type", |r| r.token_type = "mac".into()),
        ("scopes", |r| r.scopes.push("admin:org".into())),
        ("scopes", |r| r.scopes.reverse()),
        ("expires_at", |r| {
            r.expires_at = r
                .expires_at
                .map(|at| at.saturating_add(Duration::from_secs(86_400)))
        }),
        ("obtained_at", |r| {
            r.obtained_at = r.obtained_at.saturating_sub(Duration::from_secs(1))
        }),
        ("refresh_token", |r| r.refresh_token = None),
        ("extra field names", |r| {
            r.extra.remove("custom");
        }),
    ];
    for (i, (field, edit)) in edits.into_iter().enumerate() {
        let key = TokenKey::new("github", format!("user-{i}"));
        store.put(&key, &record("x")).await.unwrap();
        let mut raw = TokenStore::get(&backend, &key)
            .await
            .unwrap()
            .unwrap()
            .record;
        edit(&mut raw);
        backend.put(&key, &raw).await.unwrap();
        let error = store.get(&key).await.unwrap_err();
        assert_eq!(field_of(&error), field, "{error}");
        assert!(!error.is_retryable());
        assert!(error.to_string().contains(field), "{error}");
    }
    // Unedited, it reads.
    let key = TokenKey::new("github", "untouched");
    store.put(&key, &record("x")).await.unwrap();
    assert!(store.get(&key).await.unwrap().is_some());
}

/// Each clear field of a pending flow, edited in the backend, makes the
/// flow unreadable (get and take) with an error that names that field: a
/// redirect URI, an rmcp issuer requirement kept in the attributes, or an
/// expiry cannot be changed at rest.
#[tokio::test]
async fn an_edited_clear_field_of_a_flow_is_refused_and_named() {
    let (backend, store) = encrypted(keyring("k1", 1));
    type Edit = fn(&mut PendingFlow);
    let edits: [(&str, Edit); 8] = [
        ("redirect_uri", |f| {
            f.redirect_uri = "https://attacker.example/cb".into()
        }),
        ("scopes", |f| f.scopes.push("admin".into())),
        ("elicitation_id", |f| f.elicitation_id.push('x')),
        ("started_by", |f| f.started_by = Some("session-2".into())),
        ("attributes", |f| {
            f.attributes
                .insert("rmcp.require_issuer".into(), "false".into());
        }),
        ("attributes", |f| f.attributes.clear()),
        ("created_at", |f| {
            f.created_at = f.created_at.saturating_sub(Duration::from_secs(1))
        }),
        ("expires_at", |f| {
            f.expires_at = f.expires_at.saturating_add(Duration::from_secs(3600))
        }),
    ];
    for (i, (field, edit)) in edits.into_iter().enumerate() {
        let key = TokenKey::new("github", format!("flow-user-{i}"));
        let original = flow(&key);
        store.insert(&original).await.unwrap();
        // Replace the stored flow by an edited copy: take it, end its
        // active mark, store the copy.
        let mut raw = backend.take(&original.state).await.unwrap().unwrap();
        backend
            .complete(
                &key,
                &raw.state,
                &FlowOutcome::Failed { reason: "x".into() },
                Duration::from_millis(1),
            )
            .await
            .unwrap();
        edit(&mut raw);
        backend.insert(&raw).await.unwrap();
        let error = store.get_flow(&original.state).await.unwrap_err();
        assert_eq!(field_of(&error), field, "{error}");
        let error = store.take(&original.state).await.unwrap_err();
        assert_eq!(field_of(&error), field, "{error}");
    }
}

/// A secret field of one write put into another write of the same record
/// is refused: every field of a record comes from one write. (A whole
/// earlier record put back is not detected; see the crate docs.)
#[tokio::test]
async fn fields_of_two_writes_cannot_be_mixed() {
    let (backend, store) = encrypted(keyring("k1", 1));
    let key = TokenKey::new("github", "alice");
    store.put(&key, &record("first")).await.unwrap();
    let first = TokenStore::get(&backend, &key)
        .await
        .unwrap()
        .unwrap()
        .record;
    store.put(&key, &record("second")).await.unwrap();
    let mut mixed = TokenStore::get(&backend, &key)
        .await
        .unwrap()
        .unwrap()
        .record;
    mixed.refresh_token = first.refresh_token.clone();
    backend.put(&key, &mixed).await.unwrap();
    let error = store.get(&key).await.unwrap_err();
    assert!(
        matches!(
            EncryptionError::find_in(&error),
            Some(EncryptionError::Tampered { .. })
        ),
        "{error}"
    );

    // The whole first record, put back, is a record the wrapper wrote.
    backend.put(&key, &first).await.unwrap();
    let read = store.get(&key).await.unwrap().unwrap().record;
    assert_eq!(
        read.access_token.expose_secret(),
        record("first").access_token.expose_secret()
    );
}

/// A token and a flow written by the first release (envelope version 1,
/// captured from it with key `k-2026` = 32 bytes of 0x42).
const V1_TOKEN: &str = r#"{"v":1,"access_token":"mcpenc:v1:k-2026:49:_sNvUKbbgxBMqJLfzP_xLthjBYuWLTwetr0YGGFOPA1N6OPeUUTwXZoLcEfNLDXwMA","refresh_token":"mcpenc:v1:k-2026:50:_sNvUKbbgxDi8GrEtCrsqdc3s41RnzJ7p64UDA8vQ3PCbLm5aHZphBhmYk5uf5qkCig","token_type":"Bearer","scopes":["repo","read:user"],"expires_at":1795003600000,"obtained_at":1795000000000,"extra":{"id_token":"mcpenc:v1:k-2026:45:_sNvUKbbgxAAoR9PJ96eitK3_sqTjheahYEZNQRHazwE2TM-Z_PImBajzojs"}}"#;
const V1_FLOW: &str = r#"{"v":1,"state":"v1-fixture-state","provider":"github","subject":"alice","pkce_verifier":"mcpenc:v1:k-2026:81:_sNvUKbbgxAT081Jndp_sM_iuGnFTm5ZrcjagaqEr5LorsbMuOfA8--uvm4_RI5iSQ2lHfq2LcRySx944fkxReg72XuEIY2fOJYS9GbWz8JE","redirect_uri":"http://127.0.0.1:9/cb","scopes":["repo"],"elicitation_id":"elicitation-v1","created_at":1795000000000,"expires_at":4795000000000}"#;

fn v1_keyring() -> Keyring {
    Keyring::new(EncryptionKey::from_bytes("k-2026", &[0x42; 32]).unwrap())
}

fn versions(record: &TokenRecord) -> Vec<u32> {
    let mut secrets = vec![&record.access_token];
    secrets.extend(&record.refresh_token);
    secrets.extend(record.extra.iter().map(|(_, value)| value));
    secrets
        .into_iter()
        .map(|secret| EnvelopeInfo::read(secret.expose_secret()).unwrap().version)
        .collect()
}

#[tokio::test]
async fn first_release_records_still_read_and_are_rewritten() {
    let key = TokenKey::new("github", "alice");
    let v1 = codec::decode_token(V1_TOKEN.as_bytes()).unwrap();
    assert_eq!(versions(&v1), [1, 1, 1]);

    // Read as they are.
    let backend = MemoryStore::new();
    let store = EncryptedStore::new(backend.clone(), v1_keyring());
    backend.put(&key, &v1).await.unwrap();
    let read = store.get(&key).await.unwrap().unwrap().record;
    assert_eq!(read.access_token.expose_secret(), "gho_v1_access");
    assert_eq!(
        read.refresh_token.unwrap().expose_secret(),
        "ghr_v1_refresh"
    );
    assert_eq!(
        read.extra.get("id_token").unwrap().expose_secret(),
        "eyJ.v1.id"
    );
    let flow = codec::decode_flow(V1_FLOW.as_bytes()).unwrap();
    backend.insert(&flow).await.unwrap();
    let taken = store.take(&flow.state).await.unwrap().unwrap();
    assert_eq!(
        taken.pkce_verifier.expose_secret(),
        "v1-pkce-verifier-0123456789-0123456789-abcdef"
    );

    // A rekey rewrites them in the current version.
    let report = store.rekey_tokens().await.unwrap();
    assert_eq!(report.rekeyed, 1, "{report:?}");
    let stored = TokenStore::get(&backend, &key)
        .await
        .unwrap()
        .unwrap()
        .record;
    assert_eq!(versions(&stored), [ENVELOPE_VERSION; 3]);
    assert_eq!(
        store
            .get(&key)
            .await
            .unwrap()
            .unwrap()
            .record
            .access_token
            .expose_secret(),
        "gho_v1_access"
    );
    assert_eq!(store.rekey_tokens().await.unwrap().already_current, 1);

    // So does the next write.
    let other = TokenKey::new("github", "bob");
    backend.put(&other, &v1).await.unwrap();
    let fresh = TokenRecord::new("gho_new", Timestamp::now()).with_refresh_token("ghr_new");
    store.put(&other, &fresh).await.unwrap();
    let stored = TokenStore::get(&backend, &other)
        .await
        .unwrap()
        .unwrap()
        .record;
    assert_eq!(versions(&stored), [ENVELOPE_VERSION; 2]);

    // A version 1 field slipped into a version 2 record is refused.
    let mut mixed = TokenStore::get(&backend, &key)
        .await
        .unwrap()
        .unwrap()
        .record;
    mixed.refresh_token = Some(SecretString::from(
        v1.refresh_token.unwrap().expose_secret().to_owned(),
    ));
    backend.put(&key, &mixed).await.unwrap();
    assert!(matches!(
        EncryptionError::find_in(&store.get(&key).await.unwrap_err()),
        Some(EncryptionError::Tampered { .. })
    ));
}
