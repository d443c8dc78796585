//! A thin Table service REST client: JSON without OData metadata, Entra bearer tokens for real
//! accounts, Shared Key Lite for the Azurite emulator on loopback only, and the handful of
//! operations the ledger needs (create table, insert, get, conditional replace, query).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, ETAG, IF_MATCH};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Map, Value};
use sha2::Sha256;

use crate::azure::credential::{is_loopback_endpoint, CredentialError, TokenSource};

/// Entra ID token scope for Azure Storage (Table service "Authorize access to tables using
/// Microsoft Entra ID").
pub(crate) const STORAGE_SCOPE: &str = "https://storage.azure.com/.default";
/// Entra ID authorization of Table requests needs 2019-02-02 or later (Table service REST
/// API, "Authorize with Microsoft Entra ID"); JSON payloads need 2013-08-15 or later.
const API_VERSION: &str = "2019-02-02";
/// Entity bodies without `odata.*` annotations: the ledger knows every property's type
/// (Table service REST API, "Payload format for Table service operations").
const NO_METADATA: &str = "application/json;odata=nometadata";
/// Transient answers (timeouts, throttling, server busy) are retried this many times in all.
const TRIES: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("Table ledger endpoint {endpoint:?}: {why}")]
    Config { endpoint: String, why: String },
    #[error("could not obtain a Table Storage token")]
    Auth(#[source] CredentialError),
    #[error("Table service {op} failed to reach {endpoint}")]
    Transport {
        op: &'static str,
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("Table service {op} answered {status} {code}: {message}")]
    Status {
        op: &'static str,
        status: u16,
        code: String,
        message: String,
    },
    #[error("Table service {op}: unexpected response")]
    Decode {
        op: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl TableError {
    /// The HTTP status of a service answer, if that is what this is.
    pub(crate) fn status(&self) -> Option<StatusCode> {
        match self {
            TableError::Status { status, .. } => StatusCode::from_u16(*status).ok(),
            _ => None,
        }
    }
}

/// How requests are authorized.
pub enum TableAuth {
    /// An Entra ID bearer token for `https://storage.azure.com/.default`.
    Entra(Arc<dyn TokenSource>),
    /// Shared Key Lite with an account key: only for an emulator on loopback (checked by
    /// [`TableClient::new`]), since a key in an app setting is a secret that never expires.
    SharedKey { key: Vec<u8> },
}

impl TableAuth {
    /// A base64 account key, as the emulator documents its well-known one.
    pub fn shared_key(base64_key: &str) -> Result<Self, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD
            .decode(base64_key.trim())
            .map(|key| TableAuth::SharedKey { key })
    }
}

/// An entity read back, with the ETag that a conditional write must present.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entity {
    pub(crate) properties: Map<String, Value>,
    pub(crate) etag: String,
}

pub(crate) struct TableClient {
    http: reqwest::Client,
    endpoint: String,
    /// The account name as the Shared Key canonicalized resource starts with it.
    account: String,
    auth: TableAuth,
}

impl std::fmt::Debug for TableClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableClient")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl TableClient {
    pub(crate) fn new(endpoint: &str, auth: TableAuth) -> Result<Self, TableError> {
        let checked = check_endpoint(endpoint, matches!(auth, TableAuth::SharedKey { .. }))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| TableError::Config {
                endpoint: checked.endpoint.clone(),
                why: e.to_string(),
            })?;
        Ok(TableClient {
            http,
            endpoint: checked.endpoint,
            account: checked.account,
            auth,
        })
    }

    /// Creates the table; one that exists already is fine (409 TableAlreadyExists).
    pub(crate) async fn create_table(&self, table: &str) -> Result<(), TableError> {
        let body = serde_json::json!({ "TableName": table });
        match self
            .send(
                "create table",
                Method::POST,
                "Tables",
                &[],
                Some(&body),
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(StatusCode::CONFLICT) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Insert Entity: false when an entity with these keys exists already (409), so the
    /// caller decides whether that is a no-op or a lost race.
    pub(crate) async fn insert(
        &self,
        table: &str,
        entity: &Map<String, Value>,
    ) -> Result<bool, TableError> {
        let body = Value::Object(entity.clone());
        match self
            .send("insert entity", Method::POST, table, &[], Some(&body), None)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(StatusCode::CONFLICT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Get Entity; None when there is none (404).
    pub(crate) async fn get(
        &self,
        table: &str,
        partition: &str,
        row: &str,
    ) -> Result<Option<Entity>, TableError> {
        let path = entity_path(table, partition, row);
        let response = match self
            .send("get entity", Method::GET, &path, &[], None, None)
            .await
        {
            Ok(r) => r,
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => return Ok(None),
            Err(e) => return Err(e),
        };
        let etag = response
            .headers
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let properties = decode("get entity", &response.body)?;
        Ok(Some(Entity { properties, etag }))
    }

    /// Update Entity (replace) if the entity still has `etag`: false when it changed
    /// meanwhile (412 Precondition Failed), so the caller reads again and retries.
    pub(crate) async fn replace_if(
        &self,
        table: &str,
        entity: &Map<String, Value>,
        etag: &str,
    ) -> Result<bool, TableError> {
        let key = |name: &str| entity.get(name).and_then(Value::as_str).unwrap_or_default();
        let path = entity_path(table, key("PartitionKey"), key("RowKey"));
        let body = Value::Object(entity.clone());
        match self
            .send(
                "update entity",
                Method::PUT,
                &path,
                &[],
                Some(&body),
                Some(etag),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(StatusCode::PRECONDITION_FAILED) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Query Entities with an OData `$filter` (None: the whole table), following the
    /// continuation headers: a page holds at most 1,000 entities and a query may end a page
    /// early, even empty (Table service REST API, "Query timeout and pagination").
    pub(crate) async fn query(
        &self,
        table: &str,
        filter: Option<&str>,
    ) -> Result<Vec<Map<String, Value>>, TableError> {
        let mut out = Vec::new();
        let mut next: Option<(String, Option<String>)> = None;
        loop {
            let mut query: Vec<(&str, &str)> = Vec::new();
            if let Some(f) = filter {
                query.push(("$filter", f));
            }
            if let Some((pk, rk)) = &next {
                query.push(("NextPartitionKey", pk));
                if let Some(rk) = rk {
                    query.push(("NextRowKey", rk));
                }
            }
            let path = format!("{table}()");
            let response = self
                .send("query entities", Method::GET, &path, &query, None, None)
                .await?;
            let page: QueryPage =
                serde_json::from_slice(&response.body).map_err(|source| TableError::Decode {
                    op: "query entities",
                    source,
                })?;
            out.extend(page.value);
            let header = |name: &str| {
                response
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            next = header("x-ms-continuation-NextPartitionKey")
                .map(|pk| (pk, header("x-ms-continuation-NextRowKey")));
            if next.is_none() {
                return Ok(out);
            }
        }
    }

    /// Sends one request, retrying transient failures with a growing pause. Every write the
    /// ledger makes is safe to repeat: inserts answer 409 and conditional replaces 412 when an
    /// earlier try landed, and the ledger tells its own landed write apart (see `record_id`).
    async fn send(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Answer, TableError> {
        let mut url =
            Url::parse(&format!("{}/{path}", self.endpoint)).map_err(|e| TableError::Config {
                endpoint: self.endpoint.clone(),
                why: format!("bad request path {path:?}: {e}"),
            })?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut pause = Duration::from_millis(200);
        for tried in 1..=TRIES {
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .headers(self.headers(&url).await?);
            if let Some(etag) = if_match {
                request = request.header(IF_MATCH, etag);
            }
            if let Some(body) = body {
                request = request
                    .header(CONTENT_TYPE, "application/json")
                    // Inserts answer 204 without echoing the entity back.
                    .header("Prefer", "return-no-content")
                    .body(body.to_string());
            }
            let transient = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    let bytes = response
                        .bytes()
                        .await
                        .map_err(|source| TableError::Transport {
                            op,
                            endpoint: self.endpoint.clone(),
                            source,
                        })?;
                    if status.is_success() {
                        return Ok(Answer {
                            headers,
                            body: bytes.to_vec(),
                        });
                    }
                    let error = status_error(op, status, &bytes);
                    if !is_transient(status) || tried == TRIES {
                        return Err(error);
                    }
                    error
                }
                Err(source) => {
                    let error = TableError::Transport {
                        op,
                        endpoint: self.endpoint.clone(),
                        source,
                    };
                    if tried == TRIES {
                        return Err(error);
                    }
                    error
                }
            };
            tracing::debug!("{transient}; trying again in {pause:?}");
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        unreachable!("the last try returns")
    }

    async fn headers(&self, url: &Url) -> Result<HeaderMap, TableError> {
        let date = httpdate::fmt_http_date(SystemTime::now());
        let authorization = match &self.auth {
            TableAuth::Entra(tokens) => {
                let token = tokens.token().await.map_err(TableError::Auth)?;
                format!("Bearer {}", token.secret())
            }
            TableAuth::SharedKey { key } => {
                let signature = sign_lite(key, &date, &self.account, url.path());
                format!("SharedKeyLite {}:{signature}", self.account)
            }
        };
        let mut h = HeaderMap::new();
        let value = |s: &str| HeaderValue::from_str(s).expect("ASCII header value");
        h.insert("x-ms-date", value(&date));
        h.insert("x-ms-version", value(API_VERSION));
        h.insert("Accept", value(NO_METADATA));
        h.insert("DataServiceVersion", value("3.0"));
        h.insert("MaxDataServiceVersion", value("3.0;NetFx"));
        let mut auth = value(&authorization);
        auth.set_sensitive(true);
        h.insert(AUTHORIZATION, auth);
        Ok(h)
    }
}

/// An endpoint fit to send requests to.
#[derive(Debug)]
pub(crate) struct CheckedEndpoint {
    /// Without a trailing `/`.
    endpoint: String,
    /// The account name a Shared Key canonicalized resource starts with.
    account: String,
}

/// `endpoint` = `https://{account}.table.core.windows.net`, or an emulator URL on loopback
/// whose first path segment is the account (`http://127.0.0.1:10002/devstoreaccount1`).
/// Plain http and account keys (`shared_key`) are refused unless the endpoint is loopback, as
/// for ARM: neither a token nor a signed request goes over the network in clear, and a key
/// (a secret that never expires) is no way to reach a real account. Checked before any
/// credential is built, so the refusal names the endpoint.
pub(crate) fn check_endpoint(
    endpoint: &str,
    shared_key: bool,
) -> Result<CheckedEndpoint, TableError> {
    let endpoint = endpoint.trim().trim_end_matches('/').to_string();
    let config = |why: &str| TableError::Config {
        endpoint: endpoint.clone(),
        why: why.to_string(),
    };
    let url = Url::parse(&endpoint).map_err(|e| config(&e.to_string()))?;
    let loopback = is_loopback_endpoint(&endpoint);
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        "http" => return Err(config("plain http is only allowed to a loopback host")),
        _ => return Err(config("must be an https URL")),
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(config(
            "must not carry a query or fragment (a SAS is not used)",
        ));
    }
    if shared_key && !loopback {
        return Err(config(
            "an account key is only accepted for an emulator on loopback; use an Entra identity (Storage Table Data Contributor)",
        ));
    }
    let first_segment = url
        .path_segments()
        .and_then(|mut s| s.next())
        .filter(|s| !s.is_empty());
    let account = match first_segment {
        // The tables hang off a real account's root; a path would address nothing.
        Some(_) if !loopback => {
            return Err(config(
                "a Table Storage endpoint has no path: https://{account}.table.core.windows.net",
            ))
        }
        // Path-style (emulator) URLs name the account in the first segment.
        Some(segment) => segment.to_string(),
        None if shared_key => {
            return Err(config(
                "an emulator URL names its account in the path (http://127.0.0.1:PORT/devstoreaccount1)",
            ))
        }
        None => url
            .host_str()
            .and_then(|h| h.split('.').next())
            .unwrap_or_default()
            .to_string(),
    };
    Ok(CheckedEndpoint { endpoint, account })
}

struct Answer {
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct QueryPage {
    #[serde(default)]
    value: Vec<Map<String, Value>>,
}

/// Timeouts, throttling (429, 503 ServerBusy) and server errors are worth another try.
fn is_transient(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504)
}

fn decode(op: &'static str, body: &[u8]) -> Result<Map<String, Value>, TableError> {
    serde_json::from_slice(body).map_err(|source| TableError::Decode { op, source })
}

/// The service's error: `{"odata.error":{"code":…,"message":{"value":…}}}` in JSON.
fn status_error(op: &'static str, status: StatusCode, body: &[u8]) -> TableError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("odata.error"));
    let code = error
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let message = error
        .and_then(|e| e.pointer("/message/value"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect());
    TableError::Status {
        op,
        status: status.as_u16(),
        code,
        message,
    }
}

/// Shared Key Lite for the Table service: `StringToSign = Date + "\n" +
/// CanonicalizedResource`, where the resource is `/{account}` followed by the encoded URI
/// path (for a path-style emulator URL the account appears twice), HMAC-SHA256 with the
/// decoded key, base64 (Table service REST API, "Authorize with Shared Key", Shared Key Lite
/// for the Table service).
fn sign_lite(key: &[u8], date: &str, account: &str, path: &str) -> String {
    let string_to_sign = format!("{date}\n/{account}{path}");
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// `{table}(PartitionKey='…',RowKey='…')` with OData string quoting (a `'` doubled) and the
/// path percent-encoded.
fn entity_path(table: &str, partition: &str, row: &str) -> String {
    let literal = |s: &str| encode_path(&s.replace('\'', "''"));
    format!(
        "{table}(PartitionKey='{}',RowKey='{}')",
        literal(partition),
        literal(row)
    )
}

/// Percent-encodes everything but RFC 3986 unreserved characters and the sub-delimiters
/// an entity address uses as they are.
fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            write!(out, "%{b:02X}").expect("writing to a String");
        }
    }
    out
}

/// A PartitionKey or RowKey from any text. Keys may not hold `/`, `\`, `#`, `?` nor control
/// characters U+0000–U+001F and U+007F–U+009F (Table service data model, "Characters
/// disallowed in key fields"); resource ids are full of `/`. Each of those, and `!` (the
/// escape itself) and `%` (which proxies and SDKs take for an escape of their own), becomes
/// `!` and two hex digits, so the mapping stays one-to-one.
pub(crate) fn key(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '/' | '\\' | '#' | '?' | '%' | '!' | '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => {
                write!(out, "!{:02X}", c as u32).expect("writing to a String")
            }
            c => out.push(c),
        }
    }
    out
}

/// An OData string literal for a `$filter`: quoted, a `'` doubled.
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::credential::StaticToken;

    #[test]
    fn keys_hold_no_disallowed_character_and_stay_distinct() {
        let id = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/a";
        let k = key(id);
        assert_eq!(
            k,
            "!2Fsubscriptions!2Fs!2FresourceGroups!2Frg!2Fproviders!2FMicrosoft.Web!2Fsites!2Fa"
        );
        for raw in [
            "a/b", "a\\b", "a#b", "a?b", "a%2Fb", "a!2Fb", "a\tb", "a\u{85}b",
        ] {
            let k = key(raw);
            assert!(
                !k.chars().any(|c| "/\\#?%".contains(c) || c.is_control()),
                "{raw:?} -> {k:?}"
            );
        }
        // The escape character is escaped too, so no two texts share a key.
        assert_ne!(key("a/b"), key("a!2Fb"));
        assert_ne!(key("a%2Fb"), key("a/b"));
    }

    #[test]
    fn entity_addresses_quote_and_encode_their_keys() {
        assert_eq!(
            entity_path("targets", "r-1", "it's a b"),
            "targets(PartitionKey='r-1',RowKey='it''s%20a%20b')"
        );
        assert_eq!(literal("o'k"), "'o''k'");
    }

    #[test]
    fn shared_key_lite_signs_date_and_canonicalized_resource() {
        // HMAC-SHA256 over "Date\n/account/path" with the decoded key, base64.
        let sig = sign_lite(
            b"key",
            "Mon, 01 Jan 2024 00:00:00 GMT",
            "acct",
            "/acct/runs",
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
        mac.update(b"Mon, 01 Jan 2024 00:00:00 GMT\n/acct/acct/runs");
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(sig, expected);
    }

    fn entra() -> TableAuth {
        TableAuth::Entra(Arc::new(StaticToken::new("t")))
    }

    #[test]
    fn plain_http_and_keys_are_refused_off_loopback() {
        let key = || TableAuth::shared_key("a2V5").unwrap();
        let refused = |endpoint: &str, auth: TableAuth| {
            TableClient::new(endpoint, auth).unwrap_err().to_string()
        };
        assert!(refused("http://acct.table.core.windows.net", entra()).contains("plain http"));
        assert!(refused("https://acct.table.core.windows.net", key()).contains("account key"));
        assert!(refused("http://10.0.0.4:10002/devstoreaccount1", key()).contains("plain http"));
        assert!(refused("ftp://127.0.0.1/devstoreaccount1", key()).contains("https"));
        assert!(refused("http://127.0.0.1:10002", key()).contains("names its account"));
        assert!(refused("https://acct.table.core.windows.net/?sv=x", entra()).contains("query"));
        assert!(refused("https://acct.table.core.windows.net/ledger", entra()).contains("no path"));

        let real = TableClient::new("https://acct.table.core.windows.net/", entra()).unwrap();
        assert_eq!(
            (real.endpoint.as_str(), real.account.as_str()),
            ("https://acct.table.core.windows.net", "acct")
        );
        let emulator = TableClient::new("http://127.0.0.1:10002/devstoreaccount1", key()).unwrap();
        assert_eq!(emulator.account, "devstoreaccount1");
    }
}
