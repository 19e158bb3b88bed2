//! The layers of `tracer/src` depend one way (ARCHITECTURE.md): the command line and the
//! commands on the session, the session on the stages, the stages on `tracer-common`. Read
//! from the source: every `crate::` path names the top-level module it depends on.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// Modules that must not know what the user typed or selected, nor how a session runs.
const STAGES: [&str; 6] = [
    "kernel",
    "output",
    "correlate",
    "decode",
    "rules",
    "attribution",
];
/// What they must not use.
const ABOVE_STAGES: [&str; 3] = ["cli", "commands", "session"];

/// Top-level module -> the top-level modules its files name with `crate::`.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pending = vec![src.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("source directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).expect("under src");
            let first = relative.components().next().expect("a file");
            let module = first
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            if module == "main" || module == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("source file");
            let used = graph.entry(module.clone()).or_default();
            used.extend(crate_paths(&text).into_iter().filter(|m| *m != module));
        }
    }
    graph
}

/// First segments of every `crate::` path in `text`, including those inside `crate::{...}`.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The items at the top level of the brace group.
            let mut depth = 0;
            let mut item = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.extend(first_identifier(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 || ch != '{' {
                    item.push(ch);
                }
            }
            found.extend(first_identifier(&item));
        } else {
            found.extend(first_identifier(rest));
        }
    }
    found.remove("self");
    found
}

fn first_identifier(text: &str) -> Option<String> {
    let ident: String = text
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!ident.is_empty()).then_some(ident)
}

#[test]
fn stages_know_nothing_of_the_command_line_or_the_session() {
    let graph = dependencies();
    for stage in STAGES {
        let used = &graph[stage];
        for above in ABOVE_STAGES {
            assert!(!used.contains(above), "{stage} uses {above}: {used:?}");
        }
    }
}

/// The pure stages: data in, data out.
const PURE: [&str; 3] = ["correlate", "decode", "attribution"];
/// Modules that open sockets, run programs or read the machine.
const WITH_IO: [&str; 10] = [
    "rules",
    "kernel",
    "topology",
    "reader",
    "metrics",
    "netns",
    "cgroup",
    "doctor",
    "btf",
    "privileges",
];

#[test]
fn pure_stages_depend_on_data_not_on_io() {
    let graph = dependencies();
    for stage in PURE {
        let used = &graph[stage];
        for io in WITH_IO {
            assert!(!used.contains(io), "{stage} uses {io}: {used:?}");
        }
    }
}

#[test]
fn modules_do_not_depend_on_each_other_in_a_cycle() {
    let graph = dependencies();
    // Kahn's algorithm: what is left once every module without dependants is removed is a cycle.
    let mut remaining = graph.clone();
    loop {
        let leaves: Vec<String> = remaining
            .iter()
            .filter(|(_, used)| used.iter().all(|m| !remaining.contains_key(m)))
            .map(|(module, _)| module.clone())
            .collect();
        if leaves.is_empty() {
            break;
        }
        for leaf in leaves {
            remaining.remove(&leaf);
        }
    }
    assert!(
        remaining.is_empty(),
        "these modules depend on each other in a cycle: {remaining:?}"
    );
}

#[test]
fn the_reader_of_paths_finds_grouped_and_nested_imports() {
    let found = crate_paths(
        "use crate::{\n    a::{b, c},\n    d,\n}; // crate::ignored\nlet x = crate::e::f();",
    );
    assert_eq!(
        found,
        ["a", "d", "e"].into_iter().map(String::from).collect()
    );
}
