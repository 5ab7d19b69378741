//! Whether a step is up to date, and why not, in words.
//!
//! A step that declares `inputs` has a fingerprint: blake3 over what it runs
//! (its commands, or its Lua function's source), its variables, the content
//! of its input files, and the fingerprints of its dependencies. It is up to
//! date when the fingerprint equals the one of its last successful run and
//! every declared output exists. Input files whose size and mtime are
//! unchanged since that run are not read again.

use std::collections::BTreeSet;
use std::path::Path;

use crate::digest::{DEPFILE_MISSING, Digest};
use crate::file_stamp::{FileStamp, now_ns, stamp_file};
use crate::graph::Step;
use crate::paths::{is_glob, normalize};
use crate::root_dir::RootDir;
use crate::spec::Run;
use crate::state::{SmallMap, StepRecord};

/// What a step runs, as text: changes to it are "command changed".
pub fn command_text(step: &Step, root: &Path) -> String {
    match &step.run {
        // Written into one string: this runs for every step of every build.
        Run::Commands(commands) => {
            use std::fmt::Write;
            let mut text = String::new();
            for (i, command) in commands.iter().enumerate() {
                let separator = if i == 0 { "" } else { "\n" };
                let _ = write!(text, "{separator}{command}");
            }
            text
        }
        Run::Lua(source) => {
            let (file, first, last) = (&source.file, source.first_line, source.last_line);
            let body = std::fs::read_to_string(root.join(file))
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

/// Whether a tracked step must run: its would-be record, and why.
pub enum Freshness {
    /// No `inputs` and no `depfile`: it always runs.
    Untracked,
    UpToDate(StepRecord),
    Stale(StepRecord, Vec<String>),
}

/// Decides whether `step` is up to date, given its variables, what its
/// dependencies reported in this build, and its last successful run.
pub fn check(
    root: &RootDir,
    step: &Step,
    env: &[(String, String)],
    deps: SmallMap<Digest>,
    previous: Option<&StepRecord>,
    forced: bool,
) -> Result<Freshness, String> {
    if step.inputs.is_empty() && step.depfile.is_none() {
        return Ok(Freshness::Untracked);
    }
    let discovered = previous.map(|p| p.discovered.clone()).unwrap_or_default();
    let inputs = stamp_inputs(root, &step.inputs, &discovered, previous)
        .map_err(|e| format!("inputs: {e}"))?;
    let mut record = unhashed_record(command_text(step, root.path()), env, inputs, deps);
    record.discovered = discovered;
    // The same work as last time has the same fingerprint: no need to hash
    // it again (most steps of a build are up to date).
    record.fingerprint = match previous {
        Some(old) if same_work(old, &record) => old.fingerprint,
        _ => fingerprint_of(&record),
    };
    let missing = missing_outputs(root, &step.outputs);
    let reasons = reasons(previous, &record, &missing, forced);
    Ok(if reasons.is_empty() {
        // Its outputs are as that run left them.
        record.outputs = previous.and_then(|p| p.outputs);
        Freshness::UpToDate(record)
    } else {
        Freshness::Stale(record, reasons)
    })
}

/// The record to keep after a successful run: with a depfile, the files it
/// lists become inputs (stamped now). Returns a warning when the depfile
/// is missing; the record then makes the step run again next time.
pub fn after_run(
    root: &RootDir,
    step: &Step,
    mut record: StepRecord,
) -> (StepRecord, Option<String>) {
    let Some(depfile) = &step.depfile else {
        return (record, None);
    };
    let path = step.dir.join(depfile);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => {
            record.fingerprint = DEPFILE_MISSING;
            return (
                record,
                Some(format!(
                    "depfile {depfile} was not readable after the step ran ({e}); it will run again next time"
                )),
            );
        }
    };
    let discovered: BTreeSet<String> = parse_depfile(&text)
        .into_iter()
        .map(|dep| {
            let abs = step.dir.join(&dep);
            match abs.strip_prefix(root.path()) {
                Ok(rel) => normalize(rel),
                Err(_) => abs.to_string_lossy().into_owned(),
            }
        })
        .collect();
    let previous = record.clone();
    match stamp_inputs(root, &step.inputs, &discovered, Some(&previous)) {
        Ok(inputs) => {
            let mut fresh =
                self::record(previous.command.clone(), &[], inputs, previous.deps.clone());
            // Keep the hashed variables of the run; recompute the fingerprint over them.
            fresh.env = previous.env;
            fresh.fingerprint = fingerprint_of(&fresh);
            fresh.discovered = discovered;
            (fresh, None)
        }
        Err(e) => {
            record.fingerprint = DEPFILE_MISSING;
            (
                record,
                Some(format!(
                    "cannot read the files depfile {depfile} lists ({e}); the step will run again next time"
                )),
            )
        }
    }
}

/// The prerequisites of a Makefile-style depfile (as `cc -MD` writes):
/// `target: dep dep \` continuation lines, `\ ` for a space in a name,
/// `$$` for `$`. Targets are not returned.
pub fn parse_depfile(text: &str) -> Vec<String> {
    let joined = text.replace("\\\r\n", " ").replace("\\\n", " ");
    let mut deps = Vec::new();
    for line in joined.lines() {
        // The first unescaped ':' followed by whitespace or end ends the targets.
        let bytes = line.as_bytes();
        let mut split = None;
        for i in 0..bytes.len() {
            if bytes[i] == b':'
                && (i == 0 || bytes[i - 1] != b'\\')
                && bytes.get(i + 1).is_none_or(|b| b.is_ascii_whitespace())
            {
                split = Some(i);
                break;
            }
        }
        let Some(split) = split else { continue };
        let mut word = String::new();
        let mut chars = line[split + 1..].chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek().is_some_and(|n| *n == ' ' || *n == '#') => {
                    word.push(chars.next().unwrap())
                }
                '$' if chars.peek() == Some(&'$') => {
                    chars.next();
                    word.push('$');
                }
                c if c.is_whitespace() => {
                    if !word.is_empty() {
                        deps.push(std::mem::take(&mut word));
                    }
                }
                c => word.push(c),
            }
        }
        if !word.is_empty() {
            deps.push(word);
        }
    }
    deps.dedup();
    deps
}

/// Stamps the files matched by `patterns` and the `extra` paths (those that
/// exist), reusing hashes from `previous` when size and mtime did not change.
pub fn stamp_inputs(
    root: &RootDir,
    patterns: &[String],
    extra: &BTreeSet<String>,
    previous: Option<&StepRecord>,
) -> Result<SmallMap<FileStamp>, String> {
    // Literal paths are taken as written (they are often another step's
    // gitignored outputs); only glob patterns honour the ignore rules.
    let mut files = if patterns.iter().any(|p| is_glob(p)) {
        let globs: Vec<String> = patterns.iter().filter(|p| is_glob(p)).cloned().collect();
        crate::glob::glob(root.path(), &globs, false, true)?
    } else {
        Vec::with_capacity(patterns.len() + extra.len())
    };
    // Literal paths and discovered ones count only when they are files: one
    // stat tells, and its metadata is the stamp's.
    let literal = patterns.iter().filter(|p| !is_glob(p));
    files.extend(literal.map(|p| normalize(Path::new(p))));
    files.extend(extra.iter().cloned());
    files.sort();
    files.dedup();
    let now_ns = now_ns();
    let mut stamps = SmallMap::with_capacity(files.len());
    for rel in files {
        let reuse = previous.and_then(|p| p.inputs.get(&rel));
        match stamp_file(root, &rel, reuse, now_ns) {
            Ok(stamp) => {
                stamps.insert(rel, stamp);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {rel}: {e}")),
        }
    }
    Ok(stamps)
}

/// The record a run of the step now would leave (fingerprint included).
pub fn record(
    command: String,
    env: &[(String, String)],
    inputs: SmallMap<FileStamp>,
    deps: SmallMap<Digest>,
) -> StepRecord {
    let mut record = unhashed_record(command, env, inputs, deps);
    record.fingerprint = fingerprint_of(&record);
    record
}

/// As [`record`], its fingerprint left empty.
fn unhashed_record(
    command: String,
    env: &[(String, String)],
    inputs: SmallMap<FileStamp>,
    deps: SmallMap<Digest>,
) -> StepRecord {
    let env: SmallMap<Digest> = env
        .iter()
        // Piper's own variables say nothing about the work (and PIPER_BUILD
        // changes every run).
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "PIPER"
                    | "PIPER_STEP"
                    | "PIPER_BUILD"
                    | "PIPER_ROOT"
                    | "PIPER_BUILD_ID"
                    | "PIPER_BUILD_NUMBER"
                    | "PIPER_AGENT"
            )
        })
        .map(|(k, v)| (k.clone(), Digest::of(v.as_bytes())))
        .collect();
    StepRecord {
        fingerprint: Digest::default(),
        command,
        env,
        inputs,
        deps,
        discovered: BTreeSet::new(),
        outputs: None,
    }
}

/// Whether `now` is the work `old` recorded: what its fingerprint covers
/// (command, variables, inputs' content, dependencies) is equal.
fn same_work(old: &StepRecord, now: &StepRecord) -> bool {
    old.fingerprint != DEPFILE_MISSING
        && old.command == now.command
        && old.env == now.env
        && old.deps == now.deps
        && old.inputs.len() == now.inputs.len()
        && (old.inputs.iter().zip(now.inputs.iter()))
            .all(|((old_path, old), (path, now))| old_path == path && old.hash == now.hash)
}

fn fingerprint_of(record: &StepRecord) -> Digest {
    // The pieces are fed one by one (no string built per entry). A step
    // whose work is unchanged keeps its recorded fingerprint (`same_work`),
    // so these bytes can change without rerunning what is up to date.
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"piper-step-v2\0");
    hasher.update(record.command.as_bytes());
    let mut entry = |tag: &[u8], key: &str, value: &Digest| {
        hasher.update(tag);
        hasher.update(key.as_bytes());
        hasher.update(b"\0");
        hasher.update(&value.0);
    };
    for (k, v) in &record.env {
        entry(b"\0env\0", k, v);
    }
    for (path, stamp) in &record.inputs {
        entry(b"\0in\0", path, &stamp.hash);
    }
    for (name, fp) in &record.deps {
        entry(b"\0dep\0", name, fp);
    }
    Digest::from_hasher(&hasher)
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
    if old.fingerprint == DEPFILE_MISSING {
        why.push("its depfile was missing after its last run".to_string());
    } else if old.fingerprint != now.fingerprint {
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

/// Declared outputs (root-relative, see `graph::Step::outputs`) that do
/// not exist; a glob counts as present if it matches something.
pub fn missing_outputs(root: &RootDir, outputs: &[String]) -> Vec<String> {
    let missing = |pattern: &&String| match is_glob(pattern) {
        true => existing_outputs(root.path(), std::slice::from_ref(*pattern)).is_empty(),
        false => !root.exists(pattern),
    };
    outputs.iter().filter(missing).cloned().collect()
}

/// What dependents fingerprint of a step that has a record: the digest of
/// its outputs when it declares some (early cutoff: the same outputs, the
/// same value, however it got there), else its own fingerprint.
pub fn seen_by_dependents(record: &StepRecord) -> Digest {
    record.outputs.unwrap_or(record.fingerprint)
}

/// The files of the declared outputs (those under an output directory
/// included), sorted; None when a step declares none or one is missing.
pub fn output_files(root: &Path, outputs: &[String]) -> Option<Vec<std::path::PathBuf>> {
    if outputs.is_empty() {
        return None;
    }
    // One expansion per pattern: a pattern that names nothing is missing.
    let mut files = Vec::new();
    for pattern in outputs {
        let found = existing_outputs(root, std::slice::from_ref(pattern));
        if found.is_empty() {
            return None;
        }
        for path in found {
            collect_files(&path, &mut files).ok()?;
        }
    }
    files.sort();
    files.dedup();
    Some(files)
}

/// blake3 over the declared outputs' contents (files under an output
/// directory included), in path order; None when a step declares none or
/// one is missing or unreadable (dependents then see that it ran).
pub fn outputs_digest(root: &Path, outputs: &[String]) -> Option<Digest> {
    let files = output_files(root, outputs)?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"piper-outputs-v1\0");
    let mut buffer = Vec::new();
    for file in files {
        let name = file.strip_prefix(root).unwrap_or(&file);
        hasher.update(name.to_string_lossy().as_bytes());
        hasher.update(b"\0");
        hash_file(&mut hasher, &file, &mut buffer).ok()?;
        hasher.update(b"\0");
    }
    Some(Digest::from_hasher(&hasher))
}

/// Feeds the file at `path` to `hasher`, a piece at a time through
/// `buffer`, which is kept across files. (blake3's `update_reader` zeroes a
/// 64 KiB buffer for each file: a quarter of the instructions of a
/// 1000-step build whose steps each make one small output.)
fn hash_file(
    hasher: &mut blake3::Hasher,
    path: &Path,
    buffer: &mut Vec<u8>,
) -> std::io::Result<()> {
    use std::io::Read;
    const PIECE: u64 = 1 << 20;
    let mut file = std::fs::File::open(path)?;
    loop {
        buffer.clear();
        // `read_to_end` fills the spare capacity without zeroing it first;
        // short of a whole piece, it has seen the end of the file.
        let read = (&mut file).take(PIECE).read_to_end(buffer)?;
        hasher.update(buffer);
        if (read as u64) < PIECE {
            return Ok(());
        }
    }
}

fn collect_files(path: &Path, files: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            collect_files(&entry?.path(), files)?;
        }
    } else {
        files.push(path.to_path_buf());
    }
    Ok(())
}

/// The files and directories that root-relative `outputs` name now.
pub fn existing_outputs(root: &Path, outputs: &[String]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for pattern in outputs {
        if is_glob(pattern) {
            let matches = crate::glob::glob(root, std::slice::from_ref(pattern), true, false)
                .unwrap_or_default();
            found.extend(matches.into_iter().map(|m| root.join(m)));
        } else if root.join(pattern).exists() {
            found.push(root.join(pattern));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(hash: &str) -> FileStamp {
        FileStamp {
            size: 1,
            mtime_ns: 1,
            hash: Digest::of(hash.as_bytes()),
        }
    }

    #[test]
    fn depfiles_as_compilers_write_them() {
        let text = "build/main.o: src/main.c include/greet.h \\\n  /usr/include/stdio.h my\\ file.h cost$$.h\n";
        assert_eq!(
            parse_depfile(text),
            [
                "src/main.c",
                "include/greet.h",
                "/usr/include/stdio.h",
                "my file.h",
                "cost$.h"
            ]
        );
        assert_eq!(parse_depfile("a.o b.o: x.h\ny.o: z.h\n"), ["x.h", "z.h"]);
        assert!(parse_depfile("").is_empty());
    }

    #[test]
    fn outputs_are_hashed_whole_across_pieces_and_files() {
        let tmp = tempfile::tempdir().unwrap();
        // Larger than a piece, and a small file after it in the same buffer.
        let big: Vec<u8> = (0..(2 << 20) + 123).map(|i| (i % 251) as u8).collect();
        std::fs::write(tmp.path().join("big.bin"), &big).unwrap();
        std::fs::write(tmp.path().join("small.txt"), b"small").unwrap();
        let mut expected = blake3::Hasher::new();
        expected.update(b"piper-outputs-v1\0big.bin\0");
        expected.update(&big);
        expected.update(b"\0small.txt\0small\0");
        let outputs = ["small.txt".to_string(), "big.bin".to_string()];
        assert_eq!(
            outputs_digest(tmp.path(), &outputs),
            Some(Digest::from_hasher(&expected))
        );
        assert_eq!(outputs_digest(tmp.path(), &["gone".into()]), None);
    }

    #[test]
    fn reasons_name_what_changed() {
        let env = [("A".to_string(), "1".to_string())];
        let inputs = SmallMap::from_iter([
            ("a.c".to_string(), stamp("x")),
            ("b.c".to_string(), stamp("y")),
        ]);
        let old = record("cc a.c".into(), &env, inputs, SmallMap::new());
        assert!(reasons(Some(&old), &old, &[], false).is_empty());

        let env2 = [("A".to_string(), "2".to_string())];
        let inputs2 = SmallMap::from_iter([
            ("a.c".to_string(), stamp("z")),
            ("c.c".to_string(), stamp("w")),
        ]);
        let now = record(
            "cc -O2 a.c".into(),
            &env2,
            inputs2,
            SmallMap::from_iter([("gen".into(), Digest::of(b"f"))]),
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
