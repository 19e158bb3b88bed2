//! The files in `deploy/` against what tracer needs and exports: the DaemonSet gives exactly
//! the capabilities and host paths `tracer doctor` checks for, read-only; the dashboard and
//! the scrape configuration name only metrics and labels tracer has.

use std::{collections::BTreeSet, path::PathBuf};

use serde::Deserialize as _;
use serde_json::Value;
use tracer::{
    metrics::EXPORTED,
    privileges::{CAPABILITIES, HOST_PATHS},
};

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

fn daemonset() -> Value {
    let text = std::fs::read_to_string(deploy("daemonset.yaml")).expect("deploy/daemonset.yaml");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).expect("a YAML document"))
        .find(|document| document["kind"] == "DaemonSet")
        .expect("a DaemonSet in deploy/daemonset.yaml")
}

fn strings(value: &Value) -> BTreeSet<String> {
    value
        .as_array()
        .map(|all| {
            all.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_daemonset_gives_exactly_what_tracer_needs() {
    let set = daemonset();
    let pod = &set["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostPID"], true,
        "namespaces are found through /proc/PID/ns/net"
    );
    assert_eq!(
        pod["hostNetwork"], true,
        "the node's own namespace is tracer's"
    );
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let tracer = &containers[0];
    assert_eq!(tracer["args"][0], "monitor");

    let security = &tracer["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(
        strings(&security["capabilities"]["drop"]),
        BTreeSet::from(["ALL".to_owned()])
    );
    let wanted: BTreeSet<String> = CAPABILITIES.iter().map(|c| c.name.to_owned()).collect();
    assert_eq!(strings(&security["capabilities"]["add"]), wanted);

    let volumes = pod["volumes"].as_array().expect("volumes");
    let mounts = tracer["volumeMounts"].as_array().expect("volumeMounts");
    let mut mounted = BTreeSet::new();
    for mount in mounts {
        assert_eq!(
            mount["readOnly"], true,
            "tracer writes nothing on the host: {mount}"
        );
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("no volume for {mount}"));
        // The web configuration comes from a Secret, and is where --web-config reads it.
        if volume["secret"].is_object() {
            let path = mount["mountPath"].as_str().expect("a path");
            let args = strings(&tracer["args"]);
            assert!(
                args.iter()
                    .any(|a| a.starts_with(path) && a.ends_with("web.yml")),
                "--web-config is read from the Secret's mount: {args:?}"
            );
            continue;
        }
        // The host path is mounted where tracer looks for it.
        assert_eq!(volume["hostPath"]["path"], mount["mountPath"], "{volume}");
        mounted.insert(mount["mountPath"].as_str().expect("a path").to_owned());
    }
    assert_eq!(volumes.len(), mounts.len(), "a volume that is not mounted");
    assert!(strings(&tracer["args"]).contains("--web-config"));
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(tracer[probe]["httpGet"]["scheme"], "HTTPS", "{probe}");
    }
    let wanted: BTreeSet<String> = HOST_PATHS.iter().map(|p| p.path.to_owned()).collect();
    assert_eq!(mounted, wanted);

    let port = &tracer["ports"][0];
    assert_eq!(port["containerPort"], 9477);
    assert_eq!(tracer["readinessProbe"]["httpGet"]["path"], "/ready");
    assert_eq!(tracer["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(strings(&tracer["args"]).contains("0.0.0.0:9477"));
}

#[test]
fn the_dashboard_queries_only_metrics_tracer_exports() {
    let text = std::fs::read_to_string(deploy("grafana-dashboard.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let exported: BTreeSet<&str> = EXPORTED.into_iter().collect();
    let mut queries: Vec<String> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            queries.push(target["expr"].as_str().expect("an expression").to_owned());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(query) = variable["query"].as_str() {
            queries.push(query.to_owned());
        }
    }
    let mut used = 0;
    for query in &queries {
        for token in query.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if token.starts_with("tracer_") || token.starts_with("process_") {
                assert!(
                    exported.contains(token),
                    "{token} in `{query}` is not exported: {exported:?}"
                );
                used += 1;
            }
            // Every exporter has the standard process metrics: tracer's are those of its job.
            if token.starts_with("process_") {
                assert!(
                    query.contains(r#"job="tracer""#),
                    "{token} in `{query}` is not tracer's"
                );
            }
        }
    }
    assert!(used >= 10, "the dashboard queries tracer's metrics");
}

#[test]
fn the_scrape_configuration_keeps_the_daemonset_s_pods() {
    let text = std::fs::read_to_string(deploy("prometheus.yml")).expect("deploy/prometheus.yml");
    let config: Value = serde_yaml_ng::from_str(&text).expect("YAML");
    let job = &config["scrape_configs"][0];
    assert_eq!(job["job_name"], "tracer");
    let set = daemonset();
    let name = &set["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"];
    let keep = job["relabel_configs"]
        .as_array()
        .expect("relabel_configs")
        .iter()
        .find(|r| r["source_labels"][0] == "__meta_kubernetes_pod_label_app_kubernetes_io_name")
        .expect("a rule on the pods' name label");
    assert_eq!(&keep["regex"], name);
    assert_eq!(keep["action"], "keep");
}
