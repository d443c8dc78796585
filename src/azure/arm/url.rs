//! Request URLs: the endpoint plus a path, the `api-version` for its provider, links from the
//! server kept on our endpoint, and the scope guard every write passes before it is sent.

use reqwest::{Method, Url};

use super::error::ArmError;
use super::ArmClient;
use crate::azure::resource_id::ResourceId;

impl ArmClient {
    /// Builds the request URL: endpoint + path, `api-version` added from the provider.
    pub(super) fn url(&self, path: &str) -> Result<Url, ArmError> {
        let mut url = if path.starts_with("http://") || path.starts_with("https://") {
            self.follow(path)?
        } else if path.starts_with('/') {
            Url::parse(&format!("{}{}", self.inner.endpoint, path))
                .map_err(|e| ArmError::config_from(format!("invalid ARM path {path:?}"), e))?
        } else {
            return Err(ArmError::config(format!(
                "ARM path {path:?} must start with '/'"
            )));
        };
        if !has_api_version(&url) {
            let version = api_version_for(url.path())?;
            url.query_pairs_mut().append_pair("api-version", version);
        }
        Ok(url)
    }

    /// An absolute URL from the server (nextLink, LRO header). It must point at our endpoint:
    /// the bearer token is never sent anywhere else.
    pub(super) fn follow(&self, link: &str) -> Result<Url, ArmError> {
        let invalid = |e| ArmError::config_from(format!("invalid link {link:?}"), e);
        let mut url = match Url::parse(link) {
            Ok(u) => u,
            Err(_) if link.starts_with('/') => self.inner.base.join(link).map_err(invalid)?,
            Err(e) => return Err(invalid(e)),
        };
        let base = &self.inner.base;
        let same_origin = url.scheme() == base.scheme()
            && url.port_or_known_default() == base.port_or_known_default()
            && url
                .host_str()
                .zip(base.host_str())
                .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b));
        if !same_origin {
            return Err(ArmError::config(format!(
                "refusing to follow {} outside the ARM endpoint {}",
                url.origin().ascii_serialization(),
                self.inner.endpoint
            )));
        }
        // Links normally carry their api-version; add ours when one is missing and known.
        if !has_api_version(&url) {
            if let Ok(version) = api_version_for(url.path()) {
                url.query_pairs_mut().append_pair("api-version", version);
            }
        }
        Ok(url)
    }

    /// The scope guard: a write's target (or, for an action, the resource it acts on) must lie
    /// at or below a configured scope.
    pub(super) fn guard(&self, method: &Method, url: &Url) -> Result<(), ArmError> {
        let path = url.path();
        let target = ResourceId::parse(path).ok().or_else(|| {
            path.trim_end_matches('/')
                .rsplit_once('/')
                .and_then(|(resource, _action)| ResourceId::parse(resource).ok())
        });
        let allowed = target.is_some_and(|id| {
            self.inner
                .config
                .write_scope
                .iter()
                .any(|scope| id.is_within(scope))
        });
        if allowed {
            Ok(())
        } else {
            Err(ArmError::OutOfScope {
                method: method.to_string(),
                path: path.to_string(),
            })
        }
    }
}

/// The subscription a path belongs to (`""` for tenant-level paths): the pacer's key.
pub(super) fn subscription_of(path: &str) -> String {
    let mut parts = path.split('/');
    while let Some(p) = parts.next() {
        if p.eq_ignore_ascii_case("subscriptions") {
            return parts.next().unwrap_or("").to_ascii_lowercase();
        }
    }
    String::new()
}

pub(super) fn strip_query(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

fn has_api_version(url: &Url) -> bool {
    url.query_pairs()
        .any(|(k, _)| k.eq_ignore_ascii_case("api-version"))
}

/// api-version by the provider namespace of the path (the last `providers/{ns}`).
fn api_version_for(path: &str) -> Result<&'static str, ArmError> {
    let segments: Vec<&str> = path.split('/').collect();
    let ns = segments
        .iter()
        .rposition(|s| s.eq_ignore_ascii_case("providers"))
        .and_then(|i| segments.get(i + 1));
    let Some(ns) = ns else {
        return Ok("2021-04-01");
    };
    match ns.to_ascii_lowercase().as_str() {
        "microsoft.web" => Ok("2024-11-01"),
        "microsoft.network" => Ok("2024-07-01"),
        "microsoft.insights" => Ok("2022-10-01"),
        "microsoft.classicnetwork" => Ok("2016-11-01"),
        _ => Err(ArmError::config(format!(
            "no api-version known for provider {ns}; put api-version in the path"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_by_provider() {
        let web = "/subscriptions/s/resourceGroups/r/providers/Microsoft.Web/sites/a/config/web";
        assert_eq!(api_version_for(web).unwrap(), "2024-11-01");
        assert_eq!(
            api_version_for(
                "/subscriptions/s/resourceGroups/r/providers/microsoft.network/virtualNetworks/v"
            )
            .unwrap(),
            "2024-07-01"
        );
        assert_eq!(
            api_version_for("/subscriptions/s/resourceGroups/r/providers/Microsoft.Web/sites/a/providers/Microsoft.Insights/x/y").unwrap(),
            "2022-10-01"
        );
        assert_eq!(
            api_version_for("/subscriptions/s/resourceGroups/r").unwrap(),
            "2021-04-01"
        );
        assert!(api_version_for("/subscriptions/s/providers/Microsoft.Foo/x").is_err());
    }

    #[test]
    fn subscription_is_the_pacer_key() {
        assert_eq!(
            subscription_of("/subscriptions/ABC/resourceGroups/r"),
            "abc"
        );
        assert_eq!(subscription_of("/providers/Microsoft.Web/operations"), "");
    }

    #[test]
    fn query_is_stripped() {
        assert_eq!(strip_query("/a/b?api-version=1"), "/a/b");
        assert_eq!(strip_query("/a/b"), "/a/b");
    }
}
