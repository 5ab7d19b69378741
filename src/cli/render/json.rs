//! `--json`: one event per line on stdout, exactly as serialized in
//! `event.rs` (documented in docs/reference/events.md).

use std::io::Write;

use super::sink::Render;
use crate::event::Event;

pub struct JsonLines<W: Write + Send> {
    out: W,
}

impl<W: Write + Send> JsonLines<W> {
    pub fn new(out: W) -> Self {
        JsonLines { out }
    }
}

impl<W: Write + Send> Render for JsonLines<W> {
    fn event(&mut self, event: &Event) {
        // A closed stdout (`| head`) is not worth a crash; the build goes on.
        let _ = serde_json::to_writer(&mut self.out, event);
        let _ = self.out.write_all(b"\n");
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
    }
}
