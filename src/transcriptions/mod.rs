//! Reading call transcriptions: the id and the row (`domain`), the only SQL
//! (`repo`), reads queued together sharing a query (`batcher`), and one read
//! per id in flight (`coalesce`, `reader`). HTTP knows this module; this
//! module knows nothing of HTTP.

mod batcher;
mod coalesce;
mod domain;
mod reader;
mod repo;

pub(crate) use domain::{MAX_IDS_PER_BATCH, Transcription, TranscriptionId, parse_id_list};
pub(crate) use reader::{ReadCoalescer, TranscriptionReader};
pub(crate) use repo::ReadError;
