//! The generic ARM resource store: resources keyed by lowercased id, indexed by lowercased
//! type so type-wide scans stay cheap on large fleets.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use crate::azure::ResourceId;

#[derive(Debug, Default, Clone)]
pub(crate) struct Store {
    resources: BTreeMap<String, Value>,
    by_type: HashMap<String, BTreeSet<String>>,
}

/// Lowercased full type of a resource id (`microsoft.web/sites/slots`), or the ARM names of
/// scope types.
pub(crate) fn type_key(id: &ResourceId) -> String {
    match id.resource_type() {
        Some(t) => t.to_ascii_lowercase(),
        None if id.resource_group().is_some() => "microsoft.resources/resourcegroups".into(),
        None => "microsoft.resources/subscriptions".into(),
    }
}

impl Store {
    /// Loads fleet resources; entries without a valid id are skipped (Fleet::load rejects them).
    pub(crate) fn from_resources(resources: Vec<Value>) -> Self {
        let mut s = Self::default();
        for r in resources {
            if let Some(id) = r
                .get("id")
                .and_then(Value::as_str)
                .and_then(|i| ResourceId::parse(i).ok())
            {
                s.put(&id, r);
            }
        }
        s
    }

    pub(crate) fn get(&self, id: &ResourceId) -> Option<&Value> {
        self.resources.get(id.key())
    }

    pub(crate) fn get_mut(&mut self, id: &ResourceId) -> Option<&mut Value> {
        self.resources.get_mut(id.key())
    }

    pub(crate) fn contains(&self, id: &ResourceId) -> bool {
        self.resources.contains_key(id.key())
    }

    /// Inserts or replaces; returns true when the resource is new.
    pub(crate) fn put(&mut self, id: &ResourceId, value: Value) -> bool {
        self.by_type
            .entry(type_key(id))
            .or_default()
            .insert(id.key().to_string());
        self.resources.insert(id.key().to_string(), value).is_none()
    }

    /// Removes the resource and everything below it; returns whether it existed.
    pub(crate) fn remove_tree(&mut self, id: &ResourceId) -> bool {
        let prefix = format!("{}/", id.key());
        let doomed: Vec<String> = self
            .resources
            .range(id.key().to_string()..)
            .take_while(|(k, _)| *k == id.key() || k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        let existed = doomed.iter().any(|k| k == id.key());
        for k in doomed {
            self.resources.remove(&k);
            for set in self.by_type.values_mut() {
                set.remove(&k);
            }
        }
        existed
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &Value> {
        self.resources.values()
    }

    /// Resources whose lowercased type is `ty`, in id order.
    pub(crate) fn of_type<'a>(
        &'a self,
        ty: &str,
    ) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
        self.by_type
            .get(&ty.to_ascii_lowercase())
            .into_iter()
            .flatten()
            .filter_map(|k| self.resources.get(k).map(|v| (k.as_str(), v)))
    }

    /// Resources of type `ty` lying within `scope` (a subscription, group or parent resource).
    pub(crate) fn of_type_within(&self, ty: &str, scope: &ResourceId) -> Vec<Value> {
        // The type index is ordered, so the resources below `scope` are one contiguous range.
        let prefix = format!("{}/", scope.key());
        let Some(keys) = self.by_type.get(&ty.to_ascii_lowercase()) else {
            return Vec::new();
        };
        keys.range(prefix.clone()..)
            .take_while(|k| k.starts_with(&prefix))
            .filter_map(|k| self.resources.get(k).cloned())
            .collect()
    }

    /// A resource group exists when stored explicitly or when anything lives inside it
    /// (fleet files usually list no resource groups).
    pub(crate) fn group_exists(&self, rg: &ResourceId) -> bool {
        self.contains(rg) || self.any_within(rg)
    }

    pub(crate) fn any_within(&self, scope: &ResourceId) -> bool {
        let prefix = format!("{}/", scope.key());
        self.resources
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix))
    }

    /// Location of the first resource inside `scope` (for implicit resource groups).
    pub(crate) fn first_location_within(&self, scope: &ResourceId) -> Option<String> {
        let prefix = format!("{}/", scope.key());
        self.resources
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .find_map(|(_, v)| v.get("location").and_then(Value::as_str).map(String::from))
    }
}

/// JSON merge for PATCH: objects merge recursively, everything else replaces.
pub(crate) fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id(s: &str) -> ResourceId {
        ResourceId::parse(s).unwrap()
    }

    #[test]
    fn put_get_remove_tree_case_insensitive() {
        let site = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/a";
        let mut st = Store::default();
        assert!(st.put(&id(site), json!({"id": site})));
        assert!(st.put(&id(&format!("{site}/slots/x")), json!({})));
        assert!(st.put(&id(&format!("{site}x")), json!({})));
        assert!(st.get(&id(&site.to_uppercase())).is_some());
        assert!(st.group_exists(&id("/subscriptions/s/resourcegroups/RG")));
        assert_eq!(st.of_type("Microsoft.Web/sites").count(), 2);
        assert!(st.remove_tree(&id(site)));
        assert_eq!(st.of_type("microsoft.web/sites/slots").count(), 0);
        assert_eq!(st.of_type("microsoft.web/sites").count(), 1);
        assert!(!st.remove_tree(&id(site)));
    }

    #[test]
    fn merge_is_recursive_for_objects_only() {
        let mut a = json!({"p": {"x": 1, "y": {"z": 2}}, "l": [1, 2]});
        merge(&mut a, &json!({"p": {"y": {"w": 3}, "x": null}, "l": [3]}));
        assert_eq!(
            a,
            json!({"p": {"x": null, "y": {"z": 2, "w": 3}}, "l": [3]})
        );
    }
}
