//! What a renderer is: a sink for events, told when a burst ends (flush)
//! and every 100 ms (tick). The terminal and JSON lines implement it;
//! `mod.rs` drives them.

use crate::event::Event;

pub trait Render: Send {
    fn event(&mut self, event: &Event);
    /// Called every 100 ms: redraw anything time-based (the status line).
    fn tick(&mut self) {}
    /// Called after each burst of events.
    fn flush(&mut self);
}
