//! Network config files: a `.conflist` (a named list of plugins) or a `.conf`/`.json` of
//! one plugin, read in lexical order.

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde_json::{Map, Value};

const EXTENSIONS: &[&str] = &["conflist", "conf", "json"];
/// A config file bigger than this is not a network config.
const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    /// The list as a conflist, whatever form the file had.
    pub raw: Value,
    pub plugins: Vec<Plugin>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plugin {
    pub kind: String,
    conf: Map<String, Value>,
    capabilities: Vec<String>,
}

impl NetworkList {
    /// Whether the list's `cniVersion` is `major.minor` or later.
    pub fn at_least(&self, major: u64, minor: u64) -> bool {
        let mut parts = self
            .cni_version
            .split('.')
            .map(|p| p.parse::<u64>().unwrap_or(0));
        let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        have >= (major, minor)
    }

    /// A list from a conflist value (as cached with a pod).
    pub fn parse_value(value: &Value) -> Result<NetworkList, String> {
        let object = value.as_object().ok_or("not a JSON object")?;
        let name = object
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or("no \"name\"")?
            .to_string();
        let cni_version = object
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.1.0")
            .to_string();
        let plugins = object
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or("no \"plugins\" list")?;
        if plugins.is_empty() {
            return Err("an empty \"plugins\" list".into());
        }
        let plugins = plugins
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let conf = p
                    .as_object()
                    .ok_or_else(|| format!("plugin {i} is not an object"))?
                    .clone();
                let kind = conf
                    .get("type")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| format!("plugin {i} has no \"type\""))?
                    .to_string();
                let capabilities = conf
                    .get("capabilities")
                    .and_then(Value::as_object)
                    .map(|caps| {
                        caps.iter()
                            .filter(|(_, on)| on.as_bool() == Some(true))
                            .map(|(k, _)| k.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(Plugin {
                    kind,
                    conf,
                    capabilities,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(NetworkList {
            name,
            cni_version,
            raw: value.clone(),
            plugins,
        })
    }

    /// A file's text: a conflist, or one plugin's config made into a list of one.
    fn parse_file(text: &str) -> Result<NetworkList, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if value.get("plugins").is_some() {
            return NetworkList::parse_value(&value);
        }
        let mut single = value.as_object().ok_or("not a JSON object")?.clone();
        let name = single.remove("name").unwrap_or(Value::Null);
        let version = single
            .remove("cniVersion")
            .unwrap_or_else(|| Value::String("0.1.0".into()));
        let list = serde_json::json!({
            "cniVersion": version,
            "name": name,
            "plugins": [Value::Object(single)],
        });
        NetworkList::parse_value(&list)
    }
}

impl Plugin {
    /// What the plugin reads on stdin: its own config, the list's name and version, the
    /// runtime config it declared capabilities for, and the previous result.
    pub fn stdin(
        &self,
        list: &NetworkList,
        runtime_config: &Map<String, Value>,
        prev: Option<&Value>,
    ) -> Vec<u8> {
        let mut conf = self.conf(list);
        let granted: Map<String, Value> = runtime_config
            .iter()
            .filter(|(k, _)| self.capabilities.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !granted.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(granted));
        }
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        serde_json::to_vec(&Value::Object(conf)).unwrap_or_default()
    }

    /// The plugin's own config with the list's name and version: what every command reads.
    pub fn conf(&self, list: &NetworkList) -> Map<String, Value> {
        let mut conf = self.conf.clone();
        conf.insert("name".into(), Value::String(list.name.clone()));
        conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
        conf
    }
}

fn config_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.contains(&e))
        })
        .collect();
    files.sort();
    files
}

/// The first `max` valid lists of the directory, or why there are none.
pub fn load(dir: &Path, max: usize) -> Result<Vec<NetworkList>, String> {
    let files = config_files(dir);
    if files.is_empty() {
        return Err(format!("no network config found in {}", dir.display()));
    }
    let mut lists = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        let text = match std::fs::metadata(&file) {
            Ok(m) if m.len() > MAX_FILE => Err(format!("larger than {MAX_FILE} bytes")),
            _ => std::fs::read_to_string(&file).map_err(|e| e.to_string()),
        };
        match text.and_then(|t| NetworkList::parse_file(&t)) {
            Ok(list) => {
                lists.push(list);
                if lists.len() == max {
                    break;
                }
            }
            Err(reason) => {
                tracing::warn!(file = %file.display(), %reason, "skipping a CNI network config");
                problems.push(format!("{}: {reason}", file.display()));
            }
        }
    }
    if lists.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(lists)
}

/// What the directory looks like: when it changes, the configs are read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, Option<SystemTime>, u64)>);

impl Fingerprint {
    pub fn of(dir: &Path) -> Fingerprint {
        Fingerprint(
            config_files(dir)
                .into_iter()
                .map(|p| {
                    let meta = std::fs::metadata(&p).ok();
                    let modified = meta.as_ref().and_then(|m| m.modified().ok());
                    let len = meta.map_or(0, |m| m.len());
                    (p, modified, len)
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_single_configs_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        assert!(
            load(dir.path(), 1)
                .unwrap_err()
                .contains("no network config")
        );
        write("05-broken.conflist", "{not json");
        write(
            "10-one.conf",
            r#"{"cniVersion":"1.0.0","name":"one","type":"bridge"}"#,
        );
        write(
            "20-two.conflist",
            r#"{"cniVersion":"1.0.0","name":"two","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]}"#,
        );
        write("30-ignored.txt", "{}");
        let lists = load(dir.path(), 5).unwrap();
        assert_eq!(
            lists.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            ["one", "two"]
        );
        assert_eq!(lists[0].plugins[0].kind, "bridge");
        assert_eq!(load(dir.path(), 1).unwrap().len(), 1);

        let two = &lists[1];
        let mut rc = Map::new();
        rc.insert("portMappings".into(), json!([{"hostPort": 1}]));
        rc.insert("bandwidth".into(), json!({}));
        let prev = json!({"cniVersion": "1.0.0", "ips": []});
        let stdin: Value =
            serde_json::from_slice(&two.plugins[1].stdin(two, &rc, Some(&prev))).unwrap();
        assert_eq!(stdin["name"], "two");
        assert_eq!(stdin["cniVersion"], "1.0.0");
        assert_eq!(
            stdin["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 1}]})
        );
        assert_eq!(stdin["prevResult"], prev);
        let first: Value = serde_json::from_slice(&two.plugins[0].stdin(two, &rc, None)).unwrap();
        assert!(first.get("runtimeConfig").is_none() && first.get("prevResult").is_none());

        std::fs::remove_file(dir.path().join("10-one.conf")).unwrap();
        std::fs::remove_file(dir.path().join("20-two.conflist")).unwrap();
        let err = load(dir.path(), 1).unwrap_err();
        assert!(err.contains("05-broken.conflist"), "{err}");
    }

    #[test]
    fn versions_and_the_shipped_example() {
        let list = |v: &str| {
            NetworkList::parse_value(
                &json!({"cniVersion": v, "name": "n", "plugins": [{"type": "x"}]}),
            )
            .unwrap()
        };
        assert!(list("1.1.0").at_least(1, 1));
        assert!(list("2.0.0").at_least(1, 1));
        assert!(!list("1.0.0").at_least(1, 1));
        assert!(!list("0.4.0").at_least(1, 1));
        assert!(!list("garbage").at_least(1, 1));

        let example = include_str!("../../../deploy/cni/10-strata.conflist");
        let example = NetworkList::parse_file(example).unwrap();
        assert_eq!(example.name, "strata");
        let kinds: Vec<&str> = example.plugins.iter().map(|p| p.kind.as_str()).collect();
        assert_eq!(kinds, ["bridge", "portmap", "bandwidth", "loopback"]);
    }

    #[test]
    fn malformed_lists() {
        for bad in [
            json!([]),
            json!({"plugins": [{"type": "x"}]}),
            json!({"name": "n", "plugins": []}),
            json!({"name": "n", "plugins": [{"notype": 1}]}),
            json!({"name": "n", "plugins": [3]}),
        ] {
            assert!(NetworkList::parse_value(&bad).is_err(), "{bad}");
        }
    }
}
