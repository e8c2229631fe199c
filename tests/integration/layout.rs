//! The library's plan, kept true: lib/'s groups are layers (lib/lib.rs), and
//! a module may use only the groups below its own. A new `use` that points
//! up a layer fails here with the file and the line, before it becomes an
//! import circle that a newcomer has to untangle.

use std::path::{Path, PathBuf};

/// Bottom first. `cli` and `program` use nothing of ours; any layer may use
/// them.
const LAYERS: [&[&str]; 5] = [
    &["proto", "cli", "program"],
    &["config"],
    &["store"],
    &["directory"],
    &["delivery", "net"],
];

fn layer_of(group: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&group))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The `crate::GROUP` references of one line of code (comments dropped).
fn groups_named(line: &str) -> Vec<&str> {
    let code = line.split("//").next().unwrap_or("");
    code.match_indices("crate::")
        .map(|(at, _)| {
            let rest = &code[at + "crate::".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

#[test]
fn lib_modules_use_only_the_layers_below_their_own() {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("lib");
    let mut files = Vec::new();
    rust_files(&lib, &mut files);
    assert!(files.len() > 40, "lib/ should hold the library");
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&lib).unwrap();
        let group = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let Some(own) = layer_of(&group) else {
            continue; // lib.rs itself
        };
        let text = std::fs::read_to_string(file).unwrap();
        // Tests may reach anywhere: they build fixtures, not the plan.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (number, line) in code.lines().enumerate() {
            for named in groups_named(line) {
                let Some(theirs) = layer_of(named) else {
                    continue; // a macro or an item of lib.rs
                };
                if named != group && theirs >= own && !LAYERS[0].contains(&named) {
                    wrong.push(format!(
                        "{}:{}: {group} uses {named}",
                        relative.display(),
                        number + 1
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "these lines point up or across a layer (lib/lib.rs gives the order); \
         move the helper down, or the caller up:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn a_reference_up_a_layer_is_seen() {
    assert_eq!(
        groups_named("use crate::store::queue::Queue; // crate::net"),
        vec!["store"]
    );
    assert_eq!(layer_of("store"), Some(2));
    assert!(layer_of("delivery") > layer_of("directory"));
}

/// Mail enters the queue one way, `deliver::enter_queue`, which DKIM-signs
/// what leaves for another host: a writer that committed a staged message
/// itself (or used `Queue::enqueue`) would send it unsigned. The queue's
/// own module and tests are exempt.
#[test]
fn only_deliver_commits_mail_to_the_queue() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["lib", "bin", "contrib"] {
        rust_files(&root.join(dir), &mut files);
    }
    let exempt = [Path::new("lib/store"), Path::new("lib/delivery/deliver.rs")];
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(root).unwrap();
        if exempt.iter().any(|e| relative.starts_with(e)) {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in code.lines().enumerate() {
            let line = line.split("//").next().unwrap_or("");
            if line.contains(".enqueue(") || line.contains(".commit(&") {
                wrong.push(format!("{}:{}: {}", relative.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "these lines queue mail around deliver::deliver_staged / queue_staged, \
         so it would leave unsigned:\n{}",
        wrong.join("\n")
    );
}
