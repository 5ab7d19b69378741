//! Build stamps (`env.stamp`): variables such as a version or a date whose
//! value a command prints when a build runs. They reach every step's
//! processes but no step's fingerprint (Bazel's volatile status), so a new
//! value never makes a step run. One [`Stamps`] per build: the commands run
//! when the first step that runs a process needs them — a build whose
//! steps are all up to date runs none — and each later build (a chained
//! one, the next in `piper watch`) runs them again.

use std::path::PathBuf;

use indexmap::IndexMap;
use tokio::sync::OnceCell;

use crate::recording::EvalCommand;
use crate::spec::Command;

pub struct Stamps {
    root: PathBuf,
    commands: IndexMap<String, Command>,
    values: OnceCell<Values>,
}

/// What the commands printed, and what went wrong.
pub struct Values {
    pub vars: Vec<(String, String)>,
    /// One per failed command: its variable is unset.
    pub warnings: Vec<String>,
}

impl Stamps {
    pub fn new(root: PathBuf, commands: IndexMap<String, Command>) -> Stamps {
        Stamps {
            root,
            commands,
            values: OnceCell::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The values, computed by the first caller; `first` is true for it
    /// (it reports the warnings, once per build).
    pub async fn values(&self) -> (&Values, bool) {
        let mut first = false;
        let values = self
            .values
            .get_or_init(|| {
                first = true;
                self.compute()
            })
            .await;
        (values, first)
    }

    async fn compute(&self) -> Values {
        let mut values = Values {
            vars: Vec::new(),
            warnings: Vec::new(),
        };
        for (name, command) in &self.commands {
            let eval = EvalCommand {
                command: command.clone(),
                cwd: None,
            };
            let root = self.root.clone();
            let ran = tokio::task::spawn_blocking(move || eval.run(&root)).await;
            let problem = match ran {
                Ok(Ok(out)) if out.code == Some(0) => {
                    let text = String::from_utf8_lossy(&out.stdout);
                    values
                        .vars
                        .push((name.clone(), text.trim_end().to_string()));
                    continue;
                }
                Ok(Ok(out)) => {
                    let status = match out.code {
                        Some(code) => format!("exit code {code}"),
                        None => "a signal".into(),
                    };
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    let stderr = stderr.trim();
                    if stderr.is_empty() {
                        format!("failed with {status}")
                    } else {
                        format!("failed with {status}: {stderr}")
                    }
                }
                Ok(Err(e)) => format!("could not run: {e}"),
                Err(e) => format!("could not run: {e}"),
            };
            values.warnings.push(format!(
                "stamp {name}: `{command}` {problem}; {name} is unset"
            ));
        }
        values
    }
}
