//! Hosts that turn the event stream into something a person or a program
//! reads: the terminal (`terminal.rs`) and JSON lines (`json.rs`). Both are
//! driven by [`drive`], which batches events so output is flushed once per
//! burst rather than once per chunk.

mod json;
mod sink;
pub mod style;
mod terminal;

use std::time::Duration;

pub use json::JsonLines;
pub use sink::Render;
pub use terminal::{OutputMode, Terminal};

use crate::event::{Event, EventReceiver};

/// Where a renderer's events come from: the executor's channel, or a
/// [`Run`](crate::Run) of the API.
pub trait EventSource {
    /// The next event; None at the end.
    fn next_event(&mut self) -> impl std::future::Future<Output = Option<Event>> + Send;
    /// An event already there, without waiting.
    fn try_next_event(&mut self) -> Option<Event>;
}

impl EventSource for EventReceiver {
    fn next_event(&mut self) -> impl std::future::Future<Output = Option<Event>> + Send {
        self.recv()
    }

    fn try_next_event(&mut self) -> Option<Event> {
        self.try_recv().ok()
    }
}

impl EventSource for crate::Run {
    fn next_event(&mut self) -> impl std::future::Future<Output = Option<Event>> + Send {
        crate::Run::next_event(self)
    }

    fn try_next_event(&mut self) -> Option<Event> {
        crate::Run::try_next_event(self)
    }
}

/// Feeds every event of `run` to `render` until the run ends (then
/// `run.wait()` has its outcome).
pub async fn drive_run(run: &mut crate::Run, render: Box<dyn Render>) {
    drive_from(run, render).await
}

/// Feeds every event to `render` until the executor drops its sender.
pub async fn drive(mut events: EventReceiver, render: Box<dyn Render>) {
    drive_from(&mut events, render).await
}

async fn drive_from(events: &mut impl EventSource, mut render: Box<dyn Render>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            event = events.next_event() => {
                let Some(event) = event else { break };
                render.event(&event);
                while let Some(event) = events.try_next_event() {
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
