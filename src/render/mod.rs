//! Hosts that turn the event stream into something a person or a program
//! reads: the terminal (`terminal.rs`) and JSON lines (`json.rs`). Both are
//! driven by [`drive`], which batches events so output is flushed once per
//! burst rather than once per chunk.

mod json;
pub mod style;
mod terminal;

use std::time::Duration;

pub use json::JsonLines;
pub use terminal::{OutputMode, Terminal};

use crate::event::{Event, EventReceiver};

pub trait Render: Send {
    fn event(&mut self, event: &Event);
    /// Called every 100 ms: redraw anything time-based (the status line).
    fn tick(&mut self) {}
    /// Called after each burst of events.
    fn flush(&mut self);
}

/// Feeds every event of `run` to `render` until the run ends (then
/// `run.wait()` has its outcome); as [`drive`], for a run of the API.
pub async fn drive_run(run: &mut crate::Run, mut render: Box<dyn Render>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            event = run.next_event() => {
                let Some(event) = event else { break };
                render.event(&event);
                while let Some(event) = run.try_next_event() {
                    render.event(&event);
                }
                render.flush();
            }
            _ = tick.tick() => {
                render.tick();
                render.flush();
            }
        }
    }
    render.flush();
}

/// Feeds every event to `render` until the executor drops its sender.
pub async fn drive(mut events: EventReceiver, mut render: Box<dyn Render>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                render.event(&event);
                while let Ok(event) = events.try_recv() {
                    render.event(&event);
                }
                render.flush();
            }
            _ = tick.tick() => {
                render.tick();
                render.flush();
            }
        }
    }
    render.flush();
}
