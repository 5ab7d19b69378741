//! What an evaluation of `piper.lua` read, recorded while it runs: the
//! files it loaded or read (with their stamps), the paths it checked, the
//! globs it expanded, the environment variables and the commands it ran
//! ([`Recording`], filled by the native functions in `lua/` and by host
//! modules through the Lua state's app data). The configuration cache
//! keeps the record to know when the graph must be evaluated again;
//! `changes.rs` reads it ([`ConfigReads`]) to know which changed paths ask
//! for a reload. Below both, and below `lua/`.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use globset::GlobSet;
use serde::{Deserialize, Serialize};

use crate::file_stamp::{FileStamp, now_ns, stamp_content};
use crate::glob::glob_set;
use crate::spec::Command;

/// One thing the evaluation read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Input {
    /// A file read (`piper.lua`, a required module, `fs.read`, `env.load`):
    /// its stamp, or None when it was absent.
    File {
        path: String,
        stamp: Option<FileStamp>,
    },
    /// `fs.exists`.
    Exists { path: String, exists: bool },
    /// `fs.glob` (and the files it matched).
    Glob {
        patterns: Vec<String>,
        hidden: bool,
        gitignore: bool,
        matches: Vec<String>,
    },
    /// `env.get` / `os.getenv` of a variable not set by the config.
    Env { name: String, value: Option<String> },
    /// A command run at evaluation time (`piper.shell`, `piper.git`): run
    /// again at each check; its exit code and output are what count.
    Command {
        command: EvalCommand,
        result: String,
    },
}

/// What an evaluation read, collected while it runs.
#[derive(Debug, Default)]
pub struct Recording {
    pub(crate) inputs: Vec<Input>,
    seen: BTreeSet<String>,
    /// Why the result must not be cached (the first untracked call).
    pub uncacheable: Option<String>,
}

impl Recording {
    fn push(&mut self, key: String, input: Input) {
        if self.seen.insert(key) {
            self.inputs.push(input);
        }
    }

    /// A file read at `rel`: its metadata (taken before reading) and the
    /// content the evaluation used, or None when it could not be read.
    pub fn file(&mut self, rel: &str, read: Option<(&std::fs::Metadata, &[u8])>) {
        let stamp = read.map(|(meta, content)| stamp_content(meta, content, now_ns()));
        let input = Input::File {
            path: rel.to_string(),
            stamp,
        };
        self.push(format!("file\0{rel}"), input);
    }

    pub fn exists(&mut self, path: &str, exists: bool) {
        let input = Input::Exists {
            path: path.to_string(),
            exists,
        };
        self.push(format!("exists\0{path}"), input);
    }

    pub fn glob(&mut self, patterns: &[String], hidden: bool, gitignore: bool, matches: &[String]) {
        let key = format!("glob\0{}\0{hidden}\0{gitignore}", patterns.join("\0"));
        let input = Input::Glob {
            patterns: patterns.to_vec(),
            hidden,
            gitignore,
            matches: matches.to_vec(),
        };
        self.push(key, input);
    }

    pub fn env(&mut self, name: &str, value: Option<&str>) {
        let input = Input::Env {
            name: name.to_string(),
            value: value.map(str::to_string),
        };
        self.push(format!("env\0{name}"), input);
    }

    pub fn command(&mut self, command: &EvalCommand, result: &CommandResult) {
        let key = format!("command\0{command:?}");
        let input = Input::Command {
            command: command.clone(),
            result: result.digest(),
        };
        self.push(key, input);
    }

    /// Something the record cannot see happened: do not cache this result.
    pub fn untracked(&mut self, why: String) {
        self.uncacheable.get_or_insert(why);
    }
}

/// A command run outside a build's supervision, output captured: while
/// the config is evaluated, or for a build stamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalCommand {
    pub command: Command,
    /// Relative to the project root.
    pub cwd: Option<String>,
}

/// How an evaluation-time command ended.
pub struct CommandResult {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl CommandResult {
    pub(crate) fn digest(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(format!("{:?}\0", self.code).as_bytes());
        hasher.update(&(self.stdout.len() as u64).to_le_bytes());
        hasher.update(&self.stdout);
        hasher.update(&self.stderr);
        hasher.finalize().to_hex().to_string()
    }
}

impl EvalCommand {
    /// Runs the command in `root` (or its `cwd`), output captured.
    pub fn run(&self, root: &Path) -> std::io::Result<CommandResult> {
        use std::process::Stdio;
        let mut command = match &self.command {
            Command::Shell(script) => {
                let mut c = std::process::Command::new("/bin/sh");
                c.arg("-c").arg(script);
                c
            }
            Command::Argv(argv) => {
                let Some((program, args)) = argv.split_first() else {
                    return Err(std::io::Error::other("expected a non-empty command"));
                };
                let mut c = std::process::Command::new(program);
                c.args(args);
                c
            }
        };
        let cwd = match &self.cwd {
            Some(dir) => root.join(dir),
            None => root.to_path_buf(),
        };
        command
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let output = crate::reaper::spawn_owned(|| command.spawn(), |c| Some(c.id()))
            .and_then(|(child, _owned)| child.wait_with_output());
        match output {
            Ok(out) => Ok(CommandResult {
                code: out.status.code(),
                stdout: out.stdout,
                stderr: out.stderr,
            }),
            // Same convention as a shell: 127 is "command not found".
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CommandResult {
                code: Some(127),
                stdout: Vec::new(),
                stderr: format!("command not found: {}", command.get_program().display())
                    .into_bytes(),
            }),
            Err(e) => Err(e),
        }
    }
}

/// What the evaluation of `piper.lua` read besides the Lua files it
/// loaded (those are `Graph::files`): files read (`fs.read`, `env.load`),
/// paths checked (`fs.exists`) and globs expanded (`fs.glob`), as the
/// configuration cache recorded them. A change to one asks for a new
/// evaluation: a file added to `fs.glob("src/*.c")` may be a new step.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConfigReads {
    /// Root-relative paths read or checked.
    paths: HashSet<String>,
    /// The globs, each with whether it matches hidden files and honours
    /// the ignore rules.
    globs: Vec<(GlobSet, bool, bool)>,
}

impl ConfigReads {
    pub(crate) fn of(inputs: &[Input]) -> ConfigReads {
        let mut reads = ConfigReads::default();
        for input in inputs {
            match input {
                Input::File { path, .. } | Input::Exists { path, .. } => {
                    reads.paths.insert(path.clone());
                }
                Input::Glob {
                    patterns,
                    hidden,
                    gitignore,
                    ..
                } => {
                    let set = glob_set(patterns.iter().map(String::as_str));
                    reads.globs.push((set, *hidden, *gitignore));
                }
                Input::Env { .. } | Input::Command { .. } => {}
            }
        }
        reads
    }

    /// Whether a change to `rel` may change what the evaluation read.
    /// `ignored` says whether the ignore rules skip it.
    pub(crate) fn asks_reload(
        &self,
        rel: &Path,
        rel_text: &str,
        ignored: impl Fn() -> bool,
    ) -> bool {
        if self.paths.contains(rel_text) {
            return true;
        }
        let hidden_part = || {
            rel.components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
        };
        self.globs.iter().any(|(set, hidden, gitignore)| {
            set.is_match(rel) && (*hidden || !hidden_part()) && !(*gitignore && ignored())
        })
    }
}
