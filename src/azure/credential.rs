//! Where bearer tokens for ARM come from: Entra ID credentials from `azure_identity`, or a
//! static token that is only ever sent to loopback endpoints (simulator, tests).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use azure_core::credentials::TokenCredential;
use futures::future::BoxFuture;
use futures::FutureExt;

/// Environment variable holding the token for [`CredentialKind::Static`].
pub(crate) const STATIC_TOKEN_ENV: &str = "VNET_MIGRATE_STATIC_TOKEN";

/// Refresh cached tokens this long before they expire, so a token never lapses mid-request.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("unknown credential kind {0:?}; valid values: managed-identity, workload-identity, azure-cli, developer-tools, static")]
    UnknownKind(String),
    #[error("the static credential is only allowed when every endpoint is loopback (127.0.0.0/8, ::1, localhost); refused for {0}")]
    StaticNotLoopback(String),
    #[error("the static credential needs at least one endpoint to check")]
    StaticWithoutEndpoints,
    #[error("the static credential needs {STATIC_TOKEN_ENV} to be set and non-empty")]
    MissingStaticToken,
    #[error("could not get a token from {kind}: {message}")]
    Provider { kind: &'static str, message: String },
}

/// A bearer token. Its value is never printed: `Debug` and `Display` show `AccessToken(***)`.
#[derive(Clone)]
pub struct AccessToken(String);

impl AccessToken {
    pub(crate) fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub(crate) fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(***)")
    }
}

impl fmt::Display for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(***)")
    }
}

/// Anything that hands out bearer tokens for ARM.
pub trait TokenSource: Send + Sync {
    fn token(&self) -> BoxFuture<'_, Result<AccessToken, CredentialError>>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CredentialKind {
    ManagedIdentity,
    WorkloadIdentity,
    AzureCli,
    DeveloperTools,
    Static,
}

impl CredentialKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ManagedIdentity => "managed-identity",
            Self::WorkloadIdentity => "workload-identity",
            Self::AzureCli => "azure-cli",
            Self::DeveloperTools => "developer-tools",
            Self::Static => "static",
        }
    }
}

impl fmt::Display for CredentialKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CredentialKind {
    type Err = CredentialError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "managed-identity" => Ok(Self::ManagedIdentity),
            "workload-identity" => Ok(Self::WorkloadIdentity),
            "azure-cli" => Ok(Self::AzureCli),
            "developer-tools" => Ok(Self::DeveloperTools),
            "static" => Ok(Self::Static),
            _ => Err(CredentialError::UnknownKind(s.to_string())),
        }
    }
}

/// A fixed token, for tests and the `static` credential kind.
pub struct StaticToken(AccessToken);

impl StaticToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(AccessToken::new(token))
    }
}

impl TokenSource for StaticToken {
    fn token(&self) -> BoxFuture<'_, Result<AccessToken, CredentialError>> {
        let t = self.0.clone();
        async move { Ok(t) }.boxed()
    }
}

/// Builds the token source named by the settings. `endpoints` are every base URL the token will
/// be sent to; the static token is refused unless all of them are loopback.
pub(crate) fn credential_from_settings(
    kind: CredentialKind,
    scope: &str,
    endpoints: &[&str],
) -> Result<Arc<dyn TokenSource>, CredentialError> {
    let provider = |e: azure_core::Error| CredentialError::Provider {
        kind: kind.as_str(),
        message: e.to_string(),
    };
    let credential: Arc<dyn TokenCredential> = match kind {
        CredentialKind::Static => {
            let token = std::env::var(STATIC_TOKEN_ENV).ok();
            return static_for_endpoints(token, endpoints);
        }
        CredentialKind::ManagedIdentity => {
            let user_assigned_id = std::env::var("AZURE_CLIENT_ID")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(azure_identity::UserAssignedId::ClientId);
            azure_identity::ManagedIdentityCredential::new(Some(
                azure_identity::ManagedIdentityCredentialOptions {
                    user_assigned_id,
                    ..Default::default()
                },
            ))
            .map_err(provider)?
        }
        CredentialKind::WorkloadIdentity => {
            azure_identity::WorkloadIdentityCredential::new(None).map_err(provider)?
        }
        CredentialKind::AzureCli => {
            azure_identity::AzureCliCredential::new(None).map_err(provider)?
        }
        CredentialKind::DeveloperTools => {
            azure_identity::DeveloperToolsCredential::new(None).map_err(provider)?
        }
    };
    Ok(Arc::new(CachedCredential {
        kind: kind.as_str(),
        credential,
        scope: scope.to_string(),
        cache: tokio::sync::Mutex::new(None),
    }))
}

fn static_for_endpoints(
    token: Option<String>,
    endpoints: &[&str],
) -> Result<Arc<dyn TokenSource>, CredentialError> {
    if endpoints.is_empty() {
        return Err(CredentialError::StaticWithoutEndpoints);
    }
    if let Some(bad) = endpoints.iter().find(|e| !is_loopback_endpoint(e)) {
        return Err(CredentialError::StaticNotLoopback(bad.to_string()));
    }
    let token = token
        .filter(|t| !t.trim().is_empty())
        .ok_or(CredentialError::MissingStaticToken)?;
    Ok(Arc::new(StaticToken::new(token)))
}

/// An endpoint a bearer token would reach in clear text on the network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} must be an https URL (http only on loopback): a bearer token is never sent in clear text to another host")]
pub struct InsecureEndpoint(pub String);

/// Accepts an endpoint that bearer tokens may be sent to: `https`, or `http` on loopback
/// (the simulator, the fakes, Azurite).
pub(crate) fn check_token_endpoint(endpoint: &str) -> Result<(), InsecureEndpoint> {
    match reqwest::Url::parse(endpoint).map(|u| u.scheme().to_string()) {
        Ok(s) if s == "https" => Ok(()),
        Ok(s) if s == "http" && is_loopback_endpoint(endpoint) => Ok(()),
        _ => Err(InsecureEndpoint(endpoint.to_string())),
    }
}

/// True for URLs whose host is 127.0.0.0/8, ::1 or `localhost`.
pub(crate) fn is_loopback_endpoint(endpoint: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(endpoint) else {
        return false;
    };
    let Some(host) = url.host_str() else {
        return false;
    };
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// Wraps an `azure_identity` credential and reuses its token until shortly before expiry.
struct CachedCredential {
    kind: &'static str,
    credential: Arc<dyn TokenCredential>,
    scope: String,
    /// Token and its expiry in Unix seconds. An async mutex so concurrent callers wait for one
    /// refresh instead of each asking Entra ID.
    cache: tokio::sync::Mutex<Option<(AccessToken, i64)>>,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl TokenSource for CachedCredential {
    fn token(&self) -> BoxFuture<'_, Result<AccessToken, CredentialError>> {
        async move {
            let mut cache = self.cache.lock().await;
            if let Some((token, expires)) = cache.as_ref() {
                if unix_now() + (REFRESH_MARGIN.as_secs() as i64) < *expires {
                    return Ok(token.clone());
                }
            }
            let fresh = self
                .credential
                .get_token(&[self.scope.as_str()], None)
                .await
                .map_err(|e| CredentialError::Provider {
                    kind: self.kind,
                    message: e.to_string(),
                })?;
            let token = AccessToken::new(fresh.token.secret().to_string());
            *cache = Some((token.clone(), fresh.expires_on.unix_timestamp()));
            Ok(token)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_refused_for_non_loopback_endpoint() {
        let err = credential_from_settings(
            CredentialKind::Static,
            "https://management.azure.com/.default",
            &["http://127.0.0.1:8080", "https://management.azure.com"],
        )
        .err()
        .expect("must refuse");
        assert!(
            matches!(err, CredentialError::StaticNotLoopback(ref e) if e.contains("management.azure.com"))
        );
        assert!(static_for_endpoints(Some("t".into()), &[]).is_err());
    }

    #[test]
    fn static_accepted_for_loopback() {
        let src = static_for_endpoints(
            Some("tok-123".into()),
            &[
                "http://127.0.0.1:8080",
                "http://localhost:1",
                "http://[::1]:9",
            ],
        )
        .unwrap();
        let t = futures::executor::block_on(src.token()).unwrap();
        assert_eq!(t.secret(), "tok-123");
        assert!(matches!(
            static_for_endpoints(None, &["http://127.0.0.1:1"]),
            Err(CredentialError::MissingStaticToken)
        ));
    }

    #[test]
    fn loopback_detection() {
        assert!(is_loopback_endpoint("http://127.8.9.1:80"));
        assert!(!is_loopback_endpoint("http://localhost.evil.com"));
        assert!(!is_loopback_endpoint("http://128.0.0.1"));
        assert!(!is_loopback_endpoint("not a url"));
    }

    #[test]
    fn tokens_go_over_https_or_to_loopback_only() {
        for ok in [
            "https://contoso.servicebus.windows.net",
            "https://acct.table.core.windows.net",
            "http://127.0.0.1:10002/devstoreaccount1",
            "http://localhost:8080",
            "http://[::1]:9",
        ] {
            assert_eq!(check_token_endpoint(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://contoso.servicebus.windows.net",
            "http://localhost.evil.com",
            "http://10.0.0.1",
            "ftp://127.0.0.1",
            "contoso.servicebus.windows.net",
        ] {
            assert_eq!(
                check_token_endpoint(bad),
                Err(InsecureEndpoint(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn token_never_printed_and_kinds_parse() {
        let t = AccessToken::new("s3cr3t");
        assert_eq!(format!("{t:?} {t}"), "AccessToken(***) AccessToken(***)");
        assert_eq!(
            "Developer-Tools".parse::<CredentialKind>().unwrap(),
            CredentialKind::DeveloperTools
        );
        let err = "msi".parse::<CredentialKind>().unwrap_err().to_string();
        assert!(err.contains("managed-identity") && err.contains("static"));
    }
}
