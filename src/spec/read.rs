//! Reading the spec out of the Lua state an evaluation left: each field
//! checked for its type and known names, every error with its `file:line`.

use std::fmt;

use indexmap::IndexMap;
use mlua::{Lua, Table, Value};

use crate::error::{Error, Result};
use crate::location::Location;
use crate::suggest;

use super::types::*;

impl RawSpec {
    /// Reads what evaluation recorded in `piper._registry`.
    pub fn from_lua(lua: &Lua) -> Result<RawSpec> {
        let registry: Table = lua
            .load("return require 'piper._registry'")
            .eval()
            .map_err(|e| Error::Lua {
                message: format!("internal: {e}"),
            })?;
        let internal = |e: mlua::Error| Error::Lua {
            message: format!("internal: {e}"),
        };
        let pipelines: Table = registry.get("pipelines").map_err(internal)?;
        let env: Table = registry.get("env").map_err(internal)?;
        let files: Vec<String> = registry.get("files").map_err(internal)?;
        let watch: Table = registry.get("watch").map_err(internal)?;
        let watch_paths: Vec<String> = watch.get("paths").map_err(internal)?;
        let watch_ignore: Vec<String> = watch.get("ignore").map_err(internal)?;
        for pattern in watch_paths.iter().chain(&watch_ignore) {
            if let Err(e) = globset::Glob::new(pattern) {
                return Err(Error::Lua {
                    message: format!("trigger.watch: invalid glob `{pattern}`: {}", e.kind()),
                });
            }
        }

        let stamps = read_stamps(&registry).map_err(internal)?;
        let mut spec = RawSpec {
            steps: Vec::new(),
            pipelines: Vec::new(),
            env: IndexMap::new(),
            stamps,
            files,
            watch_paths,
            watch_ignore,
        };
        let defined = lua.remove_app_data::<DefinedSteps>().unwrap_or_default();
        if let Some(error) = defined.error {
            return Err(error);
        }
        spec.steps = defined.steps;
        for record in pipelines.sequence_values::<Table>() {
            let record = record.map_err(internal)?;
            spec.pipelines.push(read_pipeline(&record)?);
        }
        let mut vars: Vec<(String, String)> = env
            .pairs::<String, String>()
            .collect::<mlua::Result<_>>()
            .map_err(internal)?;
        vars.sort();
        spec.env.extend(vars);
        Ok(spec)
    }
}

/// `env.stamp` commands (checked on the Lua side), sorted by name.
fn read_stamps(registry: &Table) -> mlua::Result<IndexMap<String, Command>> {
    let table: Table = registry.get("stamps")?;
    let mut stamps: Vec<(String, Command)> = Vec::new();
    for pair in table.pairs::<String, Table>() {
        let (name, spec) = pair?;
        let command = match spec.get::<Option<String>>("shell")? {
            Some(script) => Command::Shell(script),
            None => Command::Argv(spec.get("argv")?),
        };
        stamps.push((name, command));
    }
    stamps.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(stamps.into_iter().collect())
}

/// The fields of one `step "x" { ... }` or `pipeline "x" { ... }` table,
/// consumed one by one so that leftovers can be reported as unknown.
///
/// Named fields are a list searched by name, not a map: a step has a
/// handful, and the ~15 lookups of each step of a 10 000-step config each
/// hashed its key.
struct Fields<'a> {
    /// `step` or `pipeline`, and its name: what errors say it is.
    kind: &'static str,
    name: &'a str,
    location: &'a Location,
    named: Vec<(String, Value)>,
    items: Vec<Value>,
}

impl<'a> Fields<'a> {
    fn read(
        kind: &'static str,
        name: &'a str,
        location: &'a Location,
        table: &Table,
    ) -> Result<Fields<'a>> {
        let mut named = Vec::new();
        let mut keyed_items = Vec::new();
        let mut bad_key = None;
        // One protected traversal (`pairs` protects each step of it).
        table
            .for_each::<Value, Value>(|k, v| {
                match k {
                    Value::String(s) => named.push((s.to_string_lossy(), v)),
                    Value::Integer(i) => keyed_items.push((i, v)),
                    other => bad_key = bad_key.or(Some(other.type_name())),
                }
                Ok(())
            })
            .map_err(|e| Error::Spec {
                location: location.clone(),
                message: e.to_string(),
            })?;
        if let Some(type_name) = bad_key {
            return Err(Error::Spec {
                location: location.clone(),
                message: format!("{kind} `{name}`: keys must be field names, got a {type_name}"),
            });
        }
        keyed_items.sort_by_key(|(i, _)| *i);
        let items = keyed_items.into_iter().map(|(_, v)| v).collect();
        Ok(Fields {
            kind,
            name,
            location,
            named,
            items,
        })
    }

    /// What errors say it is: step `build`.
    fn owner(&self) -> String {
        format!("{} `{}`", self.kind, self.name)
    }

    fn take(&mut self, field: &str) -> Option<Value> {
        let at = (self.named.iter()).position(|(name, _)| name == field)?;
        Some(self.named.remove(at).1).filter(|v| !v.is_nil())
    }

    fn error(&self, message: impl fmt::Display) -> Error {
        Error::Spec {
            location: self.location.clone(),
            message: format!("{}: {message}", self.owner()),
        }
    }

    fn wrong_type(&self, field: &str, expected: &str, got: &Value) -> Error {
        self.error(format_args!(
            "`{field}` must be {expected}, got {}",
            describe(got)
        ))
    }

    fn string(&mut self, field: &str) -> Result<Option<String>> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.to_string_lossy())),
            Some(other) => Err(self.wrong_type(field, "a string", &other)),
        }
    }

    fn bool(&mut self, field: &str) -> Result<Option<bool>> {
        match self.take(field) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(b)),
            Some(other) => Err(self.wrong_type(field, "true or false", &other)),
        }
    }

    /// A string or a list of strings; `item` says what each one is.
    fn strings(&mut self, field: &str, item: &str) -> Result<Vec<String>> {
        match self.take(field) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.to_string_lossy()]),
            Some(Value::Table(t)) => {
                let mut list = Vec::new();
                for (i, value) in t.sequence_values::<Value>().enumerate() {
                    match value.map_err(|e| self.error(e))? {
                        Value::String(s) => list.push(s.to_string_lossy()),
                        other => {
                            let at = format!("{field}[{}]", i + 1);
                            return Err(self.wrong_type(&at, item, &other));
                        }
                    }
                }
                Ok(list)
            }
            Some(other) => {
                Err(self.wrong_type(field, &format!("{item} or a list of them"), &other))
            }
        }
    }

    /// A string or a list of strings: glob patterns, checked here so a typo
    /// is reported with the step that wrote it.
    fn patterns(&mut self, field: &str) -> Result<Vec<String>> {
        let list = self.strings(field, "a path or glob string")?;
        for pattern in &list {
            if let Err(e) = globset::Glob::new(pattern) {
                return Err(self.error(format_args!(
                    "`{field}` has an invalid glob `{pattern}`: {}",
                    e.kind()
                )));
            }
        }
        Ok(list)
    }

    fn env(&mut self, field: &str) -> Result<IndexMap<String, String>> {
        match self.take(field) {
            None => Ok(IndexMap::new()),
            Some(Value::Table(t)) => {
                env_table(&t).map_err(|m| self.error(format_args!("`{field}`: {m}")))
            }
            Some(other) => Err(self.wrong_type(field, "a table of NAME = value", &other)),
        }
    }

    /// Fails on any field not consumed, suggesting the nearest known one.
    fn finish(self, known: &[&str]) -> Result<()> {
        if let Some((field, _)) = self.named.first() {
            return Err(Error::UnknownField {
                suggestion: suggest::closest(field, known.iter().copied()),
                location: self.location.clone(),
                owner: self.owner(),
                field: field.clone(),
            });
        }
        Ok(())
    }
}

/// `run = { "cc", "-c", "x.c" }` runs `cc`, then `-c`, then `x.c`: an
/// easy slip for `argv`. A later item that is one word starting with `-`
/// is never a command of its own, so it is refused with the fix.
fn check_not_split_argv(f: &Fields, commands: &[Command]) -> Result<()> {
    let words: Vec<&str> = commands
        .iter()
        .map(|c| match c {
            Command::Shell(s) => Some(s.as_str()),
            Command::Argv(_) => None,
        })
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default();
    let looks_like_flag = |w: &&str| w.starts_with('-') && !w.contains(char::is_whitespace);
    if let Some(i) = words.iter().skip(1).position(looks_like_flag) {
        let quoted: Vec<String> = words.iter().map(|w| format!("{w:?}")).collect();
        return Err(f.error(format_args!(
            "`run` item {} ({:?}) looks like an argument, but each item of a `run` list is a command of its own; did you mean `argv = {{ {} }}`?",
            i + 2,
            words[i + 1],
            quoted.join(", ")
        )));
    }
    Ok(())
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string {:?}", s.to_string_lossy()),
        Value::Integer(i) => format!("the number {i}"),
        Value::Number(n) => format!("the number {n}"),
        Value::Boolean(b) => format!("{b}"),
        other => format!("a {}", other.type_name()),
    }
}

fn env_table(table: &Table) -> std::result::Result<IndexMap<String, String>, String> {
    let mut vars = Vec::new();
    for pair in table.pairs::<Value, Value>() {
        let (k, v) = pair.map_err(|e| e.to_string())?;
        let Value::String(k) = k else {
            return Err(format!(
                "variable names must be strings, got a {}",
                k.type_name()
            ));
        };
        let k = k.to_string_lossy();
        let v = match v {
            Value::String(s) => s.to_string_lossy(),
            Value::Integer(i) => i.to_string(),
            Value::Number(n) => n.to_string(),
            Value::Boolean(b) => b.to_string(),
            other => {
                return Err(format!(
                    "{k} must be a string, number or boolean, got a {}",
                    other.type_name()
                ));
            }
        };
        vars.push((k, v));
    }
    vars.sort();
    Ok(vars.into_iter().collect())
}

fn location_of(record: &Table) -> Location {
    recorded_location(record, &Location::new("piper.lua", 0))
}

/// The `file`/`line` the stdlib recorded in a table (via `native.where`),
/// or `fallback` where it recorded none.
fn recorded_location(table: &Table, fallback: &Location) -> Location {
    Location::new(
        table
            .get::<Option<String>>("file")
            .ok()
            .flatten()
            .unwrap_or_else(|| fallback.file.clone()),
        table
            .get::<Option<u32>>("line")
            .ok()
            .flatten()
            .unwrap_or(fallback.line),
    )
}

/// The name a step or pipeline handle refers to, if `value` is one.
fn handle(value: &Value, key: &str) -> Option<String> {
    match value {
        Value::Table(t) => t.raw_get::<Option<String>>(key).ok().flatten(),
        _ => None,
    }
}

/// The steps of a config, read as each `step "x" { ... }` is called
/// (`piper._native.define_step`), kept in the Lua state's app data until
/// evaluation ends. Read then, a step is what its table held then: a list
/// the config goes on appending to does not change it. Only the first
/// error is kept; it is reported once evaluation has succeeded, as an
/// error of the Lua code itself comes first.
#[derive(Default)]
pub struct DefinedSteps {
    steps: Vec<RawStep>,
    error: Option<Error>,
}

impl DefinedSteps {
    /// Reads the step `name` defined at `location` by `spec`.
    pub fn define(lua: &Lua, name: String, spec: &Table, location: Location) {
        if lua
            .app_data_ref::<DefinedSteps>()
            .is_none_or(|d| d.error.is_some())
        {
            return;
        }
        // Read before borrowing: reading calls into Lua.
        let read = read_step(name, location, spec);
        if let Some(mut defined) = lua.app_data_mut::<DefinedSteps>() {
            match read {
                Ok(step) => defined.steps.push(step),
                Err(error) => defined.error = Some(error),
            }
        }
    }
}

fn read_step(name: String, location: Location, spec: &Table) -> Result<RawStep> {
    let mut f = Fields::read("step", &name, &location, spec)?;
    if let Some(item) = f.items.first() {
        return Err(f.error(format_args!(
            "unexpected list item ({}); fields are written as `name = value`, e.g. run = \"make\"",
            describe(item)
        )));
    }

    let mut functions = StepFunctions::default();
    let run = match (f.take("run"), f.take("argv")) {
        (Some(_), Some(_)) => return Err(f.error("set either `run` or `argv`, not both")),
        (None, None) => Run::Commands(Vec::new()),
        (None, Some(argv)) => Run::Commands(vec![Command::Argv(argv_of(&f, "argv", &argv)?)]),
        (Some(Value::Function(func)), None) => {
            let source = LuaSource::of(&func);
            functions.run = Some(func);
            Run::Lua(source)
        }
        (Some(Value::String(s)), None) => Run::Commands(vec![Command::Shell(s.to_string_lossy())]),
        (Some(Value::Table(list)), None) => {
            let mut commands = Vec::new();
            for (i, item) in list.sequence_values::<Value>().enumerate() {
                let item = item.map_err(|e| f.error(e))?;
                match item {
                    Value::String(s) => commands.push(Command::Shell(s.to_string_lossy())),
                    Value::Table(_) => commands.push(Command::Argv(argv_of(
                        &f,
                        &format!("run[{}]", i + 1),
                        &item,
                    )?)),
                    other => {
                        return Err(f.wrong_type(
                            &format!("run[{}]", i + 1),
                            "a shell command string or an argv table",
                            &other,
                        ));
                    }
                }
            }
            check_not_split_argv(&f, &commands)?;
            Run::Commands(commands)
        }
        (Some(other), None) => {
            return Err(f.wrong_type(
                "run",
                "a shell command, a list of commands or a function",
                &other,
            ));
        }
    };

    let deps = match f.take("deps") {
        None => Vec::new(),
        Some(value) => {
            let list = match &value {
                Value::Table(t) if handle(&value, "__piper_step").is_none() => t
                    .sequence_values::<Value>()
                    .collect::<mlua::Result<Vec<_>>>()
                    .map_err(|e| f.error(e))?,
                _ => vec![value],
            };
            let mut names = Vec::new();
            for dep in list {
                match (&dep, handle(&dep, "__piper_step")) {
                    (_, Some(name)) => names.push(name),
                    (Value::String(s), _) => names.push(s.to_string_lossy()),
                    (other, _) => return Err(f.wrong_type("deps", "steps or step names", other)),
                }
            }
            names
        }
    };

    let timeout = match f.take("timeout") {
        None => None,
        Some(Value::String(s)) => Some(
            crate::duration::parse(&s.to_string_lossy())
                .map_err(|m| f.error(format_args!("`timeout`: {m}")))?,
        ),
        Some(Value::Integer(i)) if i > 0 => Some(
            crate::duration::seconds(i as f64)
                .map_err(|m| f.error(format_args!("`timeout`: {m}")))?,
        ),
        Some(Value::Number(n)) if n > 0.0 => {
            Some(crate::duration::seconds(n).map_err(|m| f.error(format_args!("`timeout`: {m}")))?)
        }
        Some(other) => {
            return Err(f.wrong_type(
                "timeout",
                "a duration like \"10m\" or a number of seconds",
                &other,
            ));
        }
    };
    let retries = match f.take("retries") {
        None => 0,
        Some(Value::Integer(i)) if (0..=100).contains(&i) => i as u32,
        Some(other) => return Err(f.wrong_type("retries", "a whole number from 0 to 100", &other)),
    };
    let when = match f.take("when") {
        None => None,
        Some(Value::Boolean(b)) => Some(Condition::Static(b)),
        Some(Value::Function(func)) => {
            functions.when = Some(func);
            Some(Condition::Lua)
        }
        Some(other) => return Err(f.wrong_type("when", "true, false or a function", &other)),
    };
    let step = RawStep {
        desc: f.string("desc")?,
        env: f.env("env")?,
        dir: f.string("dir")?,
        allow_failure: f.bool("allow_failure")?.unwrap_or(false),
        inputs: f.patterns("inputs")?,
        outputs: f.patterns("outputs")?,
        depfile: f.string("depfile")?,
        service: f.bool("service")?.unwrap_or(false),
        cache: f.bool("cache")?.unwrap_or(true),
        remote_cache: f.bool("remote_cache")?.unwrap_or(true),
        remote: f.bool("remote")?.unwrap_or(true),
        cache_salt: f.string("cache_salt")?,
        requires: f.env("requires")?,
        // Moved in once `f`, which borrows them for its errors, is done.
        name: String::new(),
        location: Location::new(String::new(), 0),
        run,
        deps,
        timeout,
        retries,
        when,
        functions,
    };
    f.finish(STEP_FIELDS)?;
    Ok(RawStep {
        name,
        location,
        ..step
    })
}

fn argv_of(f: &Fields, field: &str, value: &Value) -> Result<Vec<String>> {
    let Value::Table(t) = value else {
        return Err(f.wrong_type(field, "a list of strings (program and arguments)", value));
    };
    let mut argv = Vec::new();
    for (i, item) in t.sequence_values::<Value>().enumerate() {
        match item.map_err(|e| f.error(e))? {
            Value::String(s) => argv.push(s.to_string_lossy()),
            Value::Integer(n) => argv.push(n.to_string()),
            other => return Err(f.wrong_type(&format!("{field}[{}]", i + 1), "a string", &other)),
        }
    }
    if argv.is_empty() {
        return Err(f.error(format_args!(
            "`{field}` is empty; it needs at least the program to run"
        )));
    }
    Ok(argv)
}

fn read_pipeline(record: &Table) -> Result<RawPipeline> {
    let location = location_of(record);
    let name: String = record.get("name").map_err(|e| Error::Spec {
        location: location.clone(),
        message: e.to_string(),
    })?;
    let spec: Table = record.get("spec").map_err(|e| Error::Spec {
        location: location.clone(),
        message: e.to_string(),
    })?;
    let mut f = Fields::read("pipeline", &name, &location, &spec)?;

    let mut members = Vec::new();
    for (i, item) in std::mem::take(&mut f.items).into_iter().enumerate() {
        if let Some(step) = handle(&item, "__piper_step") {
            members.push(Member::Step(step));
        } else if let Some(pipeline) = handle(&item, "__piper_pipeline") {
            members.push(Member::Pipeline(pipeline));
        } else if let Value::String(s) = &item {
            members.push(Member::Name(s.to_string_lossy()));
        } else {
            return Err(f.wrong_type(
                &format!("item {}", i + 1),
                "a step, a pipeline or a name",
                &item,
            ));
        }
    }

    let mut triggers = Vec::new();
    for on in [TriggerOn::Success, TriggerOn::Failure, TriggerOn::Always] {
        let Some(value) = f.take(on.field()) else {
            continue;
        };
        let list = triggers_of(&f, value)?;
        for item in list {
            triggers.push(read_trigger(&f, on, &item)?);
        }
    }

    let mut schedules = Vec::new();
    if let Some(value) = f.take("schedule") {
        let list = triggers_of(&f, value)?;
        for item in list {
            let (cron, location) = match &item {
                Value::String(s) => (s.to_string_lossy(), f.location.clone()),
                Value::Table(t)
                    if t.get::<Option<String>>("__piper_trigger")
                        .ok()
                        .flatten()
                        .as_deref()
                        == Some("schedule") =>
                {
                    let cron: String = t.get("cron").map_err(|e| f.error(e))?;
                    (cron, recorded_location(t, f.location))
                }
                other => {
                    return Err(f.wrong_type(
                        "schedule",
                        "trigger.schedule \"...\", a cron string, or a list of them",
                        other,
                    ));
                }
            };
            let schedule = crate::cron::Schedule::parse(&cron).map_err(|message| Error::Spec {
                location,
                message: format!("pipeline `{}`: schedule: {message}", name),
            })?;
            schedules.push(schedule);
        }
    }

    let retry_agent_lost = match f.take("retry_agent_lost") {
        None => 0,
        Some(Value::Integer(i)) if (0..=10).contains(&i) => i as u32,
        Some(other) => {
            return Err(f.wrong_type("retry_agent_lost", "a whole number from 0 to 10", &other));
        }
    };
    let pipeline = RawPipeline {
        desc: f.string("desc")?,
        env: f.env("env")?,
        name: String::new(),
        location: Location::new(String::new(), 0),
        members,
        triggers,
        schedules,
        retry_agent_lost,
        requires: f.env("requires")?,
        remote_cache: f.bool("remote_cache")?.unwrap_or(true),
        default: f.bool("default")?.unwrap_or(false),
        args: f.strings("args", "a string")?,
    };
    f.finish(PIPELINE_FIELDS)?;
    Ok(RawPipeline {
        name,
        location,
        ..pipeline
    })
}

/// A trigger (or schedule) value, or a list of them: always a list.
fn triggers_of(f: &Fields, value: Value) -> Result<Vec<Value>> {
    match &value {
        Value::Table(t)
            if t.raw_get::<Value>("__piper_trigger")
                .is_ok_and(|v| v.is_nil()) =>
        {
            t.sequence_values::<Value>()
                .collect::<mlua::Result<Vec<_>>>()
                .map_err(|e| f.error(e))
        }
        _ => Ok(vec![value]),
    }
}

fn read_trigger(f: &Fields, on: TriggerOn, value: &Value) -> Result<RawTrigger> {
    let expected = "trigger.pipeline \"name\", a pipeline name, or a list of them";
    match value {
        Value::String(s) => Ok(RawTrigger {
            on,
            pipeline: s.to_string_lossy(),
            env: IndexMap::new(),
            location: f.location.clone(),
        }),
        Value::Table(t) => {
            if let Some(name) = handle(value, "__piper_pipeline") {
                return Ok(RawTrigger {
                    on,
                    pipeline: name,
                    env: IndexMap::new(),
                    location: f.location.clone(),
                });
            }
            let kind: Option<String> = t.get("__piper_trigger").map_err(|e| f.error(e))?;
            if kind.as_deref() != Some("pipeline") {
                return Err(f.wrong_type(on.field(), expected, value));
            }
            let pipeline: String = t.get("pipeline").map_err(|e| f.error(e))?;
            let env = match t.get::<Option<Table>>("env").map_err(|e| f.error(e))? {
                Some(env) => env_table(&env)
                    .map_err(|m| f.error(format_args!("`{}` env: {m}", on.field())))?,
                None => IndexMap::new(),
            };
            let location = recorded_location(t, f.location);
            Ok(RawTrigger {
                on,
                pipeline,
                env,
                location,
            })
        }
        other => Err(f.wrong_type(on.field(), expected, other)),
    }
}
