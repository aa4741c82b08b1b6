//! Plugin output: results (any version's IP lists and DNS) and error objects.

use serde_json::Value;

/// The addresses and DNS a result gave a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    /// Without prefix length, IPv4 first.
    pub ips: Vec<String>,
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// A successful `ADD`'s stdout: a JSON object.
pub fn parse(stdout: &[u8]) -> Result<Value, String> {
    let value: Value = serde_json::from_slice(stdout).map_err(|e| {
        let shown = String::from_utf8_lossy(&stdout[..stdout.len().min(200)]).into_owned();
        format!("{e} in {shown:?}")
    })?;
    if !value.is_object() {
        return Err("not a JSON object".into());
    }
    Ok(value)
}

pub fn addresses(result: &Value) -> Addresses {
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let bare = |cidr: &str| cidr.split('/').next().unwrap_or(cidr).to_string();
    // The pod's addresses are not its loopback's (a `loopback` plugin reports those).
    let on_loopback = |ip: &Value| {
        ip.get("interface")
            .and_then(Value::as_u64)
            .and_then(|i| result.get("interfaces")?.get(usize::try_from(i).ok()?))
            .and_then(|interface| interface.get("name"))
            .is_some_and(|name| name == "lo")
    };
    let mut ips: Vec<String> = result
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|ip| !on_loopback(ip))
        .filter_map(|ip| ip.get("address").and_then(Value::as_str))
        .map(bare)
        .filter(|ip| {
            ip.parse::<std::net::IpAddr>()
                .map_or(true, |addr| !addr.is_loopback())
        })
        .collect();
    // Results of 0.1.0 and 0.2.0.
    for old in ["ip4", "ip6"] {
        if let Some(ip) = result
            .get(old)
            .and_then(|v| v.get("ip"))
            .and_then(Value::as_str)
        {
            ips.push(bare(ip));
        }
    }
    ips.sort_by_key(|ip| ip.contains(':'));
    let dns = result.get("dns");
    Addresses {
        ips,
        nameservers: strings(dns.and_then(|d| d.get("nameservers"))),
        search: strings(dns.and_then(|d| d.get("search"))),
        options: strings(dns.and_then(|d| d.get("options"))),
    }
}

/// What a failed plugin said: its error object's `msg` and `details`, else its stderr.
pub fn failure(stdout: &[u8], stderr: &[u8], status: std::process::ExitStatus) -> String {
    if let Ok(error) = serde_json::from_slice::<Value>(stdout)
        && let Some(msg) = error.get("msg").and_then(Value::as_str)
    {
        let mut text = msg.to_string();
        if let Some(details) = error.get("details").and_then(Value::as_str)
            && !details.is_empty()
        {
            text.push_str(&format!(": {details}"));
        }
        if let Some(code) = error.get("code").and_then(Value::as_u64) {
            text.push_str(&format!(" (code {code})"));
        }
        return text;
    }
    let said = String::from_utf8_lossy(if stderr.trim_ascii().is_empty() {
        stdout
    } else {
        stderr
    })
    .trim()
    .chars()
    .take(500)
    .collect::<String>();
    if said.is_empty() {
        format!("{status}, with no message")
    } else {
        format!("{status}: {said}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn addresses_of_every_version() {
        let v1 = json!({"cniVersion": "1.0.0",
            "ips": [{"address": "fd00::5/64"}, {"address": "10.1.0.5/24", "gateway": "10.1.0.1"}],
            "dns": {"nameservers": ["10.1.0.1"], "search": ["svc"]}});
        let a = addresses(&v1);
        assert_eq!(a.ips, ["10.1.0.5", "fd00::5"]);
        assert_eq!(a.nameservers, ["10.1.0.1"]);
        assert_eq!(a.search, ["svc"]);
        let lo = json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "lo", "sandbox": "/run/netns/x"}, {"name": "eth0"}],
            "ips": [{"interface": 0, "address": "127.0.0.1/8"}, {"interface": 0, "address": "::1/128"},
                    {"interface": 1, "address": "10.3.0.2/24"}, {"address": "127.0.0.2/8"}]});
        assert_eq!(addresses(&lo).ips, ["10.3.0.2"]);
        let old = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.2.0.3/16"}});
        assert_eq!(addresses(&old).ips, ["10.2.0.3"]);
        assert!(parse(b"garbage").unwrap_err().contains("garbage"));
        assert!(parse(b"[1]").is_err());
    }

    #[test]
    fn failures_carry_the_plugin_message() {
        let status = std::process::ExitStatus::from_raw(1 << 8);
        let msg = failure(
            br#"{"cniVersion":"1.0.0","code":11,"msg":"no IP addresses available","details":"range 10.9.0.0/30"}"#,
            b"",
            status,
        );
        assert_eq!(
            msg,
            "no IP addresses available: range 10.9.0.0/30 (code 11)"
        );
        let msg = failure(b"", b"panic: boom\n", status);
        assert!(msg.ends_with("panic: boom"), "{msg}");
        assert!(failure(b"", b"", status).contains("no message"));
    }
}
