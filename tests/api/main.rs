//! One integration test binary (STYLE.md): a file per area.

mod health;
mod helpers;
mod transcription_faults;
mod transcriptions;
