//! What the user wrote: the steps and pipelines `piper.lua` defined, read
//! out of the Lua state with every field type-checked. Names are still
//! names here; `graph.rs` resolves them into the validated step graph.

mod read;
mod types;

pub use read::DefinedSteps;
pub use types::*;
