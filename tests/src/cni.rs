//! The reference CNI plugins (`/usr/lib/cni`) run the way libcni runs a network
//! configuration list for a container runtime: each plugin in order for `ADD`, the previous
//! plugin's result passed on as `prevResult`, the runtime's arguments (port mappings) given
//! to the plugins that declare the capability; `DEL` in reverse order, each plugin given the
//! list's result. See the CNI specification, "Network configuration lists" and
//! "Section 4: Plugin Delegation" (github.com/containernetworking/cni, SPEC.md).

use std::{
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// Where Debian's containernetworking-plugins installs the plugins.
pub const PLUGIN_DIR: &str = "/usr/lib/cni";

/// A network configuration list: plugin configurations run in order.
#[derive(Debug, Clone)]
pub struct NetworkList {
    /// The network's name (`name` in every plugin's configuration).
    pub name: String,
    /// The CNI version every plugin is called with.
    pub cni_version: String,
    /// The plugin configurations, each an object with at least `type`.
    pub plugins: Vec<Value>,
}

/// A port published on the host, as a runtime passes it to the `portMappings` capability.
#[derive(Debug, Clone, Copy)]
pub struct PortMapping {
    /// The host's port.
    pub host_port: u16,
    /// The container's port the host port leads to.
    pub container_port: u16,
}

/// The container a network is added to or deleted from: the `CNI_*` environment and the
/// runtime configuration of one call.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// `CNI_CONTAINERID`; CRI passes the pod sandbox's id.
    pub container_id: String,
    /// `CNI_NETNS`: the path of the network namespace.
    pub netns: PathBuf,
    /// `CNI_IFNAME`: the interface made inside the namespace.
    pub ifname: String,
    /// `CNI_ARGS`, `KEY=VALUE` pairs (CRI passes `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, ...).
    pub args: Vec<(String, String)>,
    /// The `portMappings` runtime configuration.
    pub port_mappings: Vec<PortMapping>,
}

impl NetworkList {
    /// `ADD`s the network: every plugin in order, each given the previous one's result.
    /// The last plugin's result.
    pub fn add(&self, at: &Attachment) -> anyhow::Result<Value> {
        let mut result = None;
        for plugin in &self.plugins {
            let conf = self.plugin_conf(plugin, at, result.as_ref())?;
            let output = exec("ADD", &conf, at)?;
            result =
                Some(serde_json::from_slice(&output).with_context(|| {
                    format!("{} printed a result that is not JSON", kind(plugin))
                })?);
        }
        result.context("a network list has at least one plugin")
    }

    /// `DEL`s the network: every plugin in reverse order, each given `result` (the result of
    /// [`NetworkList::add`]) as `prevResult`. Goes on past a failing plugin; the first error.
    pub fn del(&self, at: &Attachment, result: Option<&Value>) -> anyhow::Result<()> {
        let mut first_error = None;
        for plugin in self.plugins.iter().rev() {
            let deleted = self
                .plugin_conf(plugin, at, result)
                .and_then(|conf| exec("DEL", &conf, at));
            if let Err(err) = deleted {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// A plugin's configuration as libcni builds it for one call: the list's name and
    /// version, `prevResult`, and `runtimeConfig` for the capabilities the plugin declares.
    fn plugin_conf(
        &self,
        plugin: &Value,
        at: &Attachment,
        prev_result: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut conf = plugin.clone();
        let object = conf
            .as_object_mut()
            .context("a plugin configuration is a JSON object")?;
        object.insert("name".to_owned(), json!(self.name));
        object.insert("cniVersion".to_owned(), json!(self.cni_version));
        if let Some(prev) = prev_result {
            object.insert("prevResult".to_owned(), prev.clone());
        }
        let wants_ports = plugin["capabilities"]["portMappings"] == json!(true);
        if wants_ports {
            let mappings: Vec<Value> = at
                .port_mappings
                .iter()
                .map(|m| {
                    json!({
                        "hostPort": m.host_port,
                        "containerPort": m.container_port,
                        "protocol": "tcp",
                    })
                })
                .collect();
            object.insert(
                "runtimeConfig".to_owned(),
                json!({ "portMappings": mappings }),
            );
        }
        Ok(conf)
    }
}

/// The newest CNI version that every plugin of `types` supports, of 1.0.0 and 0.4.0 (asked
/// with `CNI_COMMAND=VERSION`).
pub fn common_version(types: &[&str]) -> anyhow::Result<String> {
    let mut supported: Vec<Vec<String>> = Vec::new();
    for plugin in types {
        let output = Command::new(Path::new(PLUGIN_DIR).join(plugin))
            .env("CNI_COMMAND", "VERSION")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("failed to run the CNI plugin {plugin}"))?;
        let info: Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("{plugin} printed no version information"))?;
        supported.push(
            info["supportedVersions"]
                .as_array()
                .map(|all| {
                    all.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        );
    }
    ["1.0.0", "0.4.0"]
        .into_iter()
        .find(|version| supported.iter().all(|s| s.iter().any(|v| v == version)))
        .map(str::to_owned)
        .with_context(|| format!("the CNI plugins {types:?} share neither 1.0.0 nor 0.4.0"))
}

/// The first IPv4 address of a result (`ips[].address`, without its prefix length).
pub fn first_ipv4(result: &Value) -> anyhow::Result<Ipv4Addr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .filter_map(|cidr| cidr.split('/').next())
        .find_map(|addr| addr.parse().ok())
        .with_context(|| format!("no IPv4 address in the CNI result {result}"))
}

fn kind(plugin: &Value) -> String {
    plugin["type"].as_str().unwrap_or("?").to_owned()
}

/// Runs one plugin with `command`, `conf` on its stdin; its stdout. A failure carries the
/// error the plugin printed (`{"code", "msg", "details"}`).
fn exec(command: &str, conf: &Value, at: &Attachment) -> anyhow::Result<Vec<u8>> {
    let plugin = kind(conf);
    let cni_args: Vec<String> = at.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut child = Command::new(Path::new(PLUGIN_DIR).join(&plugin))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &at.container_id)
        .env("CNI_NETNS", &at.netns)
        .env("CNI_IFNAME", &at.ifname)
        .env("CNI_PATH", PLUGIN_DIR)
        .env("CNI_ARGS", cni_args.join(";"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to run the CNI plugin {plugin}"))?;
    // The configuration is a few kB, well within a pipe's buffer.
    child
        .stdin
        .take()
        .context("the plugin has no stdin")?
        .write_all(&serde_json::to_vec(conf)?)
        .with_context(|| format!("failed to give {plugin} its configuration"))?;
    let output = child
        .wait_with_output()
        .with_context(|| format!("failed to wait for the CNI plugin {plugin}"))?;
    if !output.status.success() {
        let error: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        bail!(
            "CNI {command} of {plugin} failed ({}): {} {} {}",
            output.status,
            error["msg"].as_str().unwrap_or_default(),
            error["details"].as_str().unwrap_or_default(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> NetworkList {
        NetworkList {
            name: "net".to_owned(),
            cni_version: "1.0.0".to_owned(),
            plugins: vec![
                json!({ "type": "bridge", "bridge": "cni0" }),
                json!({ "type": "portmap", "capabilities": { "portMappings": true } }),
            ],
        }
    }

    fn attachment() -> Attachment {
        Attachment {
            container_id: "id".to_owned(),
            netns: PathBuf::from("/var/run/netns/cni-x"),
            ifname: "eth0".to_owned(),
            args: Vec::new(),
            port_mappings: vec![PortMapping {
                host_port: 18000,
                container_port: 8000,
            }],
        }
    }

    #[test]
    fn plugins_get_the_list_name_version_and_previous_result() -> anyhow::Result<()> {
        let list = list();
        let prev = json!({ "cniVersion": "1.0.0", "ips": [{ "address": "10.85.0.2/24" }] });
        let bridge = list.plugin_conf(&list.plugins[0], &attachment(), None)?;
        assert_eq!(
            bridge,
            json!({ "type": "bridge", "bridge": "cni0", "name": "net", "cniVersion": "1.0.0" })
        );
        let portmap = list.plugin_conf(&list.plugins[1], &attachment(), Some(&prev))?;
        assert_eq!(portmap["prevResult"], prev);
        assert_eq!(
            portmap["runtimeConfig"],
            json!({
                "portMappings": [{ "hostPort": 18000, "containerPort": 8000, "protocol": "tcp" }]
            })
        );
        assert_eq!(first_ipv4(&prev)?, Ipv4Addr::new(10, 85, 0, 2));
        Ok(())
    }
}
