//! Reading call transcriptions: the id and the row (`domain`), the only SQL
//! (`repo`), and one query per id in flight (`coalesce`, `reader`). HTTP
//! knows this module; this module knows nothing of HTTP.

mod coalesce;
mod domain;
mod reader;
mod repo;

pub(crate) use domain::{Transcription, TranscriptionId};
pub(crate) use reader::TranscriptionReader;
pub(crate) use repo::{ReadError, TranscriptionRepo};
