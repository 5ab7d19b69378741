//! The `piper` command's log when `PIPER_LOG` is unset: the engine's
//! warnings and errors (`tracing::warn!`), one line each on stderr, worded
//! like Piper's other warnings (`piper: warning: ...`).
//!
//! Why not tracing-subscriber's `fmt` here too: its registry and filter
//! were set up at every start (a sharded slab, a parsed directive) for the
//! one warning a run may print, and its line (timestamp, level, module
//! path) is a developer's log, not a message to the user. `PIPER_LOG=...`
//! still gets the full `fmt` subscriber (cli/mod.rs).

use std::fmt::{Debug, Write as _};

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// What loading a project warned about (`Project::warnings`), on stderr
/// as piper's other warnings are.
pub fn show_loaded(loaded: &crate::Project) {
    for warning in loaded.warnings() {
        eprintln!("piper: warning: {warning}");
    }
}

/// Prints WARN and ERROR events; spans are not tracked.
pub struct Warnings;

impl Subscriber for Warnings {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event() && *metadata.level() <= Level::WARN
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::WARN)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        // Never called: `enabled` refuses spans.
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        eprintln!("{}", line(event));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// `piper: warning: message key=value ...`.
fn line(event: &Event<'_>) -> String {
    let mut text = Text::default();
    event.record(&mut text);
    let label = match *event.metadata().level() {
        Level::ERROR => "error",
        _ => "warning",
    };
    format!("piper: {label}: {}{}", text.message, text.fields)
}

#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            name => {
                let _ = write!(self.fields, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            name => {
                let _ = write!(self.fields, " {name}={value:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// The line `Warnings` would print, captured.
    struct Capture(Arc<Mutex<Vec<String>>>);

    impl Subscriber for Capture {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            Warnings.enabled(metadata)
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            self.0.lock().unwrap().push(line(event));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn warnings_and_errors_read_like_piper_s_other_messages() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        tracing::subscriber::with_default(Capture(lines.clone()), || {
            tracing::info!("not shown");
            tracing::warn!("cannot record the state of step {}: {}", "cc", "disk full");
            tracing::error!(step = "cc", "lost");
        });
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "piper: warning: cannot record the state of step cc: disk full",
                "piper: error: lost step=cc",
            ]
        );
    }
}
