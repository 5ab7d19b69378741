//! Steps whose `run` is a Lua function: the function is called at build time
//! with a `ctx` whose `sh`/`exec` go through the same supervised runner as
//! command steps (`process.rs`), and whose `print` writes to the step's
//! output. See `lua/piper.lua` for the `ctx` API.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mlua::{Function, Lua, Table, Value};
use tokio_util::sync::CancellationToken;

use crate::process::{Exit, OutputSink};
use crate::spec::Command;

pub struct LuaStep {
    pub function: Function,
    pub dir: PathBuf,
    /// Variables added to the inherited environment.
    pub env: Vec<(String, String)>,
    /// `piper exec PIPELINE -- ARGS`: `ctx.args`, and `"$@"` for `ctx.sh`.
    pub args: std::sync::Arc<[String]>,
    /// How `ctx.sh` and `ctx.exec` run their commands: the run's runner.
    pub runner: std::sync::Arc<dyn crate::runner::Runner>,
    pub out: OutputSink,
    pub cancel: CancellationToken,
    pub grace: Duration,
}

pub enum LuaOutcome {
    Success,
    /// The function raised an error; `exit_code` is set when it came from a
    /// failing `ctx.sh`.
    Failed {
        message: String,
        exit_code: Option<i32>,
    },
}

impl LuaStep {
    pub async fn run(self, lua: &Lua, step: &str) -> LuaOutcome {
        let last_exit: Arc<Mutex<Option<i32>>> = Arc::default();
        let ctx = match self.context(lua, step, last_exit.clone()) {
            Ok(ctx) => ctx,
            Err(e) => {
                return LuaOutcome::Failed {
                    message: crate::lua::error_message(&e),
                    exit_code: None,
                };
            }
        };
        // mlua adds the traceback to errors raised inside the function.
        match self.function.call_async::<Value>(ctx).await {
            Ok(Value::Boolean(false)) => LuaOutcome::Failed {
                message: "the function returned false".into(),
                exit_code: None,
            },
            Ok(_) => LuaOutcome::Success,
            Err(e) => {
                let message = crate::lua::error_message(&e);
                let exit_code = *last_exit.lock().unwrap();
                // A canceled step says so in its status; the unwinding is noise.
                if !self.cancel.is_cancelled() {
                    self.out.write(format!("{message}\n").into_bytes()).await;
                }
                LuaOutcome::Failed {
                    message: first_line(&message),
                    exit_code,
                }
            }
        }
    }

    fn context(
        &self,
        lua: &Lua,
        step: &str,
        last_exit: Arc<Mutex<Option<i32>>>,
    ) -> mlua::Result<Table> {
        let ctx = lua.create_table()?;
        ctx.set("step", step)?;
        ctx.set("dir", self.dir.to_string_lossy().as_ref())?;
        let env = lua.create_table()?;
        for (k, v) in std::env::vars() {
            env.set(k, v)?;
        }
        for (k, v) in &self.env {
            env.set(k.as_str(), v.as_str())?;
        }
        ctx.set("env", env)?;
        ctx.set(
            "args",
            lua.create_sequence_from(self.args.iter().map(String::as_str))?,
        )?;
        ctx.set("print", self.print_function(lua)?)?;
        let commands = Commands {
            dir: self.dir.clone(),
            env: self.env.clone(),
            args: self.args.clone(),
            runner: self.runner.clone(),
            out: self.out.clone(),
            cancel: self.cancel.clone(),
            grace: self.grace,
            last_exit,
        };
        for (name, shell) in [("sh", true), ("exec", false)] {
            let commands = commands.clone();
            let function =
                lua.create_async_function(move |_, (cmd, opts): (Value, Option<Table>)| {
                    commands.clone().run(shell, cmd, opts)
                })?;
            ctx.set(name, raise_at_caller(lua, function)?)?;
        }
        Ok(ctx)
    }

    /// `ctx.print(...)`: its values, tab-separated, as a line of output.
    fn print_function(&self, lua: &Lua) -> mlua::Result<Function> {
        let out = self.out.clone();
        lua.create_async_function(move |_, args: mlua::Variadic<Value>| {
            let out = out.clone();
            let text = args
                .iter()
                .map(|v| {
                    v.to_string()
                        .unwrap_or_else(|_| format!("<{}>", v.type_name()))
                })
                .collect::<Vec<_>>()
                .join("\t");
            async move {
                out.write(format!("{text}\n").into_bytes()).await;
                Ok(())
            }
        })
    }
}

/// What `ctx.sh` and `ctx.exec` run their commands with: the step's.
#[derive(Clone)]
struct Commands {
    dir: PathBuf,
    env: Vec<(String, String)>,
    args: std::sync::Arc<[String]>,
    runner: std::sync::Arc<dyn crate::runner::Runner>,
    out: OutputSink,
    cancel: CancellationToken,
    grace: Duration,
    /// The exit code of the last failing checked command: the step's.
    last_exit: Arc<Mutex<Option<i32>>>,
}

impl Commands {
    /// Runs `cmd` (a shell string, or an argv table for `ctx.exec`) and
    /// answers `(exit code, error)`; with `check` (the default) a failure
    /// is an error, which `raise_at_caller` raises at the Lua caller.
    async fn run(
        self,
        shell: bool,
        cmd: Value,
        opts: Option<Table>,
    ) -> mlua::Result<(Option<i32>, Option<String>)> {
        let command = match (shell, cmd) {
            (true, Value::String(s)) => Command::Shell(s.to_string_lossy()),
            (false, Value::Table(t)) => {
                Command::Argv(t.sequence_values::<String>().collect::<mlua::Result<_>>()?)
            }
            (true, other) => {
                let message = format!(
                    "ctx.sh: expected a command string, got {}",
                    other.type_name()
                );
                return Ok((None, Some(message)));
            }
            (false, other) => {
                let message = format!(
                    "ctx.exec: expected an argv table, got {}",
                    other.type_name()
                );
                return Ok((None, Some(message)));
            }
        };
        if let Command::Argv(argv) = &command
            && argv.is_empty()
        {
            return Ok((None, Some("ctx.exec: the argv table is empty".into())));
        }
        let check = match &opts {
            Some(o) => o.get::<Option<bool>>("check")?.unwrap_or(true),
            None => true,
        };
        self.out.command(command.to_string()).await;
        let exit = self
            .runner
            .run(crate::runner::CommandRun {
                command: &command,
                args: &self.args,
                dir: &self.dir,
                env: &self.env,
                output: &self.out,
                cancel: &self.cancel,
                grace: self.grace,
            })
            .await;
        if exit == Exit::Canceled {
            return Ok((None, Some("canceled".into())));
        }
        if let Exit::NotFound(program) = &exit {
            let line = format!("piper: command not found: {program}\n");
            self.out.write(line.into_bytes()).await;
        }
        let code = exit.code();
        if check && !exit.success() {
            *self.last_exit.lock().unwrap() = code;
            let message = format!("`{command}` {}", exit.describe());
            return Ok((code, Some(message)));
        }
        Ok((code, None))
    }
}

/// Wraps an async primitive returning `(value, error)` in a Lua function
/// that raises the error at its caller, so the message and traceback name
/// the user's line (`piper.lua:12`), not Piper's internals.
fn raise_at_caller(lua: &Lua, primitive: mlua::Function) -> mlua::Result<mlua::Function> {
    lua.load(
        "local primitive = ...\n\
         return function(...)\n\
           local value, err = primitive(...)\n\
           if err then error(err, 2) end\n\
           return value\n\
         end",
    )
    .set_name("=piper")
    .call(primitive)
}

fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or("").to_string()
}
