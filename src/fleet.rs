//! The fleet file: `{"resources": [ … ]}`, each entry an ARM resource exactly as ARM's GET
//! returns it. Written by `snapshot` and `GET /_sim/state`, read by `--fleet`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::azure::ResourceId;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Fleet {
    pub resources: Vec<Value>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum FleetError {
    #[error("cannot read fleet file {path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("fleet file {path} is not valid")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("fleet file {path}: resource #{index} {why}")]
    Resource {
        path: String,
        index: usize,
        why: String,
    },
}

impl Fleet {
    pub(crate) fn load(path: &Path) -> Result<Self, FleetError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| FleetError::Io {
            path: p.clone(),
            source,
        })?;
        let fleet: Fleet = serde_json::from_str(&text).map_err(|source| FleetError::Parse {
            path: p.clone(),
            source,
        })?;
        for (index, r) in fleet.resources.iter().enumerate() {
            let id = r.get("id").and_then(Value::as_str);
            let why = match id {
                None => Some("has no string \"id\"".to_string()),
                Some(id) => ResourceId::parse(id).err().map(|e| e.to_string()),
            };
            if let Some(why) = why {
                return Err(FleetError::Resource {
                    path: p,
                    index,
                    why,
                });
            }
        }
        Ok(fleet)
    }

    /// Each resource with its id; entries without a valid id are passed over (`load` refuses
    /// them, but a simulator's state or a test fleet may be built by hand).
    pub fn with_ids(&self) -> impl Iterator<Item = (ResourceId, &Value)> {
        self.resources.iter().filter_map(|r| {
            let id = ResourceId::parse(r.get("id")?.as_str()?).ok()?;
            Some((id, r))
        })
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).expect("fleet serialises");
        std::fs::write(path, text)
    }
}
