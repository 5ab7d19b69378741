//! Whether a step is up to date, and why not, in words.
//!
//! A step that declares `inputs` has a fingerprint: blake3 over what it runs
//! (its commands, or its Lua function's source), its variables, the content
//! of its input files, and the fingerprints of its dependencies. It is up to
//! date when the fingerprint equals the one of its last successful run and
//! every declared output exists. Input files whose size and mtime are
//! unchanged since that run are not read again.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::UNIX_EPOCH;

use crate::graph::Step;
use crate::spec::Run;
use crate::state::{FileStamp, StepRecord};

/// What a step runs, as text: changes to it are "command changed".
pub fn command_text(step: &Step, root: &Path) -> String {
    match &step.run {
        Run::Commands(commands) => commands
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        Run::Lua(function) => {
            let info = function.info();
            let file = info.short_src.unwrap_or_default();
            let (first, last) = (
                info.line_defined.unwrap_or(0),
                info.last_line_defined.unwrap_or(0),
            );
            let body = std::fs::read_to_string(root.join(&file))
                .map(|text| {
                    text.lines()
                        .skip(first.saturating_sub(1))
                        .take(last + 1 - first.min(last + 1))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            format!("lua function at {file}:{first}-{last}\n{body}")
        }
    }
}

fn hash_hex(data: &[u8]) -> String {
    blake3::hash(data).to_hex().to_string()
}

/// Stamps the files matched by `patterns`, reusing hashes from `previous`
/// when size and mtime did not change.
pub fn stamp_inputs(
    root: &Path,
    patterns: &[String],
    previous: Option<&StepRecord>,
) -> Result<BTreeMap<String, FileStamp>, String> {
    let files = crate::lua::glob(root, patterns, false, true)?;
    let mut stamps = BTreeMap::new();
    for rel in files {
        let path = root.join(&rel);
        let meta = std::fs::metadata(&path).map_err(|e| format!("cannot read {rel}: {e}"))?;
        let size = meta.len();
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let reuse = previous
            .and_then(|p| p.inputs.get(&rel))
            .filter(|old| old.size == size && old.mtime_ns == mtime_ns && mtime_ns != 0);
        let hash = match reuse {
            Some(old) => old.hash.clone(),
            None => hash_hex(&std::fs::read(&path).map_err(|e| format!("cannot read {rel}: {e}"))?),
        };
        stamps.insert(
            rel,
            FileStamp {
                size,
                mtime_ns,
                hash,
            },
        );
    }
    Ok(stamps)
}

/// The record a run of the step now would leave (fingerprint included).
pub fn record(
    command: String,
    env: &[(String, String)],
    inputs: BTreeMap<String, FileStamp>,
    deps: BTreeMap<String, String>,
) -> StepRecord {
    let env: BTreeMap<String, String> = env
        .iter()
        .filter(|(k, _)| k != "PIPER_BUILD")
        .map(|(k, v)| (k.clone(), hash_hex(v.as_bytes())))
        .collect();
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"piper-step-v1\0");
    hasher.update(command.as_bytes());
    for (k, v) in &env {
        hasher.update(format!("\0env\0{k}\0{v}").as_bytes());
    }
    for (path, stamp) in &inputs {
        hasher.update(format!("\0in\0{path}\0{}", stamp.hash).as_bytes());
    }
    for (name, fp) in &deps {
        hasher.update(format!("\0dep\0{name}\0{fp}").as_bytes());
    }
    StepRecord {
        fingerprint: hasher.finalize().to_hex().to_string(),
        command,
        env,
        inputs,
        deps,
    }
}

/// Why the step must run, in words; empty when it is up to date.
pub fn reasons(
    previous: Option<&StepRecord>,
    now: &StepRecord,
    missing_outputs: &[String],
    forced: bool,
) -> Vec<String> {
    let mut why = Vec::new();
    if forced {
        why.push("forced".to_string());
    }
    let Some(old) = previous else {
        why.push("it never ran successfully before".to_string());
        return why;
    };
    if old.fingerprint != now.fingerprint {
        if old.command != now.command {
            why.push("its command changed".to_string());
        }
        for (k, v) in &now.env {
            match old.env.get(k) {
                None => why.push(format!("env var {k} was set")),
                Some(o) if o != v => why.push(format!("env var {k} changed")),
                _ => {}
            }
        }
        for k in old.env.keys().filter(|k| !now.env.contains_key(*k)) {
            why.push(format!("env var {k} was unset"));
        }
        for (path, stamp) in &now.inputs {
            match old.inputs.get(path) {
                None => why.push(format!("file added: {path}")),
                Some(o) if o.hash != stamp.hash => why.push(format!("file modified: {path}")),
                _ => {}
            }
        }
        for path in old.inputs.keys().filter(|p| !now.inputs.contains_key(*p)) {
            why.push(format!("file removed: {path}"));
        }
        for (name, fp) in &now.deps {
            if old.deps.get(name) != Some(fp) {
                why.push(format!("upstream step `{name}` changed"));
            }
        }
        if why.is_empty() {
            why.push("its fingerprint changed".to_string());
        }
    }
    for output in missing_outputs {
        why.push(format!("output missing: {output}"));
    }
    why
}

/// Declared outputs that do not exist (globs count as present if they match).
pub fn missing_outputs(root: &Path, dir: &Path, outputs: &[String]) -> Vec<String> {
    outputs
        .iter()
        .filter(|pattern| {
            if pattern.contains(['*', '?', '[', '{']) {
                crate::lua::glob(root, std::slice::from_ref(*pattern), true, false)
                    .map(|m| m.is_empty())
                    .unwrap_or(true)
            } else {
                !dir.join(pattern).exists()
            }
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(hash: &str) -> FileStamp {
        FileStamp {
            size: 1,
            mtime_ns: 1,
            hash: hash.into(),
        }
    }

    #[test]
    fn reasons_name_what_changed() {
        let env = [("A".to_string(), "1".to_string())];
        let inputs = BTreeMap::from([
            ("a.c".to_string(), stamp("x")),
            ("b.c".to_string(), stamp("y")),
        ]);
        let old = record("cc a.c".into(), &env, inputs, BTreeMap::new());
        assert!(reasons(Some(&old), &old, &[], false).is_empty());

        let env2 = [("A".to_string(), "2".to_string())];
        let inputs2 = BTreeMap::from([
            ("a.c".to_string(), stamp("z")),
            ("c.c".to_string(), stamp("w")),
        ]);
        let now = record(
            "cc -O2 a.c".into(),
            &env2,
            inputs2,
            BTreeMap::from([("gen".into(), "f".into())]),
        );
        let why = reasons(Some(&old), &now, &["a.o".into()], true);
        assert_eq!(
            why,
            [
                "forced",
                "its command changed",
                "env var A changed",
                "file modified: a.c",
                "file added: c.c",
                "file removed: b.c",
                "upstream step `gen` changed",
                "output missing: a.o"
            ]
        );
        assert_eq!(
            reasons(None, &now, &[], false),
            ["it never ran successfully before"]
        );
    }
}
