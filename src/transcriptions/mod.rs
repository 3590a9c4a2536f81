//! Reading call transcriptions: the id type, the row, the repository, the
//! read coalescer and the HTTP route.

mod coalesce;
mod domain;
mod repo;
pub(crate) mod route;

pub use coalesce::Coalescer;
pub use domain::{Transcription, TranscriptionId};
pub use repo::{ReadError, TranscriptionRepo};
pub use route::{TranscriptionReader, get_transcription};
