//! Health checks after connect: Key Vault references against the baseline taken before any
//! change, and an optional HTTP probe of the app's own host name.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::azure::models::{KeyVaultReference, KeyVaultStatus};

/// Setting name → status, from the `configreferences/appsettings` list.
pub(crate) fn statuses(refs: &[KeyVaultReference]) -> BTreeMap<String, KeyVaultStatus> {
    refs.iter()
        .filter_map(|r| {
            Some((
                r.setting_name()?,
                r.properties
                    .status
                    .clone()
                    .unwrap_or(KeyVaultStatus::Initialized),
            ))
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KvHealth {
    Healthy,
    /// Some references are still being evaluated.
    Pending(Vec<String>),
    /// References that resolved before and do not now.
    Broken(Vec<String>),
}

/// Every reference that was `Resolved` in the baseline must still be `Resolved`. References
/// that were already broken before the migration are not ours to judge.
pub(crate) fn compare(
    baseline: &BTreeMap<String, KeyVaultStatus>,
    now: &BTreeMap<String, KeyVaultStatus>,
) -> KvHealth {
    let mut pending = Vec::new();
    let mut broken = Vec::new();
    for (name, before) in baseline {
        if *before != KeyVaultStatus::Resolved {
            continue;
        }
        match now.get(name) {
            Some(KeyVaultStatus::Resolved) => {}
            Some(KeyVaultStatus::Initialized) => pending.push(name.clone()),
            Some(_) | None => broken.push(name.clone()),
        }
    }
    if !broken.is_empty() {
        KvHealth::Broken(broken)
    } else if !pending.is_empty() {
        KvHealth::Pending(pending)
    } else {
        KvHealth::Healthy
    }
}

/// Where the probe reaches an app's host name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FrontEnd {
    /// `https://{host}`: the app itself, in Azure.
    #[default]
    Https,
    /// The simulator at this base URL standing in for App Service's front ends
    /// (`{base}/_sim/apps/{host}{path}`): rehearsals and tests.
    Simulator(String),
}

/// GETs the app's `{path}` on `host` through `front_end` and compares the status. Only the
/// app's own host name is ever probed (the caller passes `defaultHostName`), so the tool
/// never calls arbitrary URLs.
pub(crate) async fn probe(
    client: &reqwest::Client,
    front_end: &FrontEnd,
    host: &str,
    path: &str,
    expected: u16,
) -> Result<(), String> {
    if host.contains('/') || host.contains('@') || host.is_empty() {
        return Err(format!("refusing to probe {host:?}: not a host name"));
    }
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let url = match front_end {
        FrontEnd::Https => format!("https://{host}{path}"),
        FrontEnd::Simulator(base) => {
            format!("{}/_sim/apps/{host}{path}", base.trim_end_matches('/'))
        }
    };
    let resp = client
        .get(&url)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| format!("probe {url} failed: {e}"))?;
    let got = resp.status().as_u16();
    if got == expected {
        Ok(())
    } else {
        Err(format!("probe {url} answered {got}, expected {expected}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, KeyVaultStatus> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), KeyVaultStatus::from(*b)))
            .collect()
    }

    #[test]
    fn statuses_keep_their_text() {
        for text in ["Resolved", "MSINotEnabled", "SomethingNew"] {
            let s = KeyVaultStatus::from(text);
            assert_eq!(s.to_string(), text);
            assert_eq!(serde_json::to_value(&s).unwrap(), text);
        }
        assert_eq!(
            KeyVaultStatus::from("SomethingNew"),
            KeyVaultStatus::Other("SomethingNew".into())
        );
    }

    #[test]
    fn healthy_pending_broken() {
        let base = map(&[("A", "Resolved"), ("B", "Resolved"), ("C", "VaultNotFound")]);
        assert_eq!(
            compare(&base, &map(&[("A", "Resolved"), ("B", "Resolved")])),
            KvHealth::Healthy
        );
        assert_eq!(
            compare(&base, &map(&[("A", "Resolved"), ("B", "Initialized")])),
            KvHealth::Pending(vec!["B".into()])
        );
        assert_eq!(
            compare(
                &base,
                &map(&[("A", "AccessToKeyVaultDenied"), ("B", "Initialized")])
            ),
            KvHealth::Broken(vec!["A".into()])
        );
        assert_eq!(
            compare(&base, &map(&[("B", "Resolved")])),
            KvHealth::Broken(vec!["A".into()])
        );
    }

    #[tokio::test]
    async fn probe_refuses_non_hosts() {
        let c = reqwest::Client::new();
        assert!(probe(&c, &FrontEnd::Https, "evil.example/x", "/", 200)
            .await
            .unwrap_err()
            .contains("refusing"));
    }
}
