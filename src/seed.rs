//! `middleway seed --rows N`: realistic, varied transcriptions for demos and
//! benchmarks, inserted in multi-row batches over a few connections.

use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use sqlx::{MySql, MySqlPool, QueryBuilder};
use time::{Duration, PrimitiveDateTime};

/// Rows per INSERT: large enough to amortise round trips, small enough to stay
/// far below `max_allowed_packet` (about 1 MiB per statement).
const BATCH_ROWS: u64 = 1000;
/// Concurrent INSERT streams: enough to keep InnoDB busy on a small machine.
const WRITERS: u64 = 3;

const LANGUAGES: &[&str] = &[
    "en-US", "en-GB", "es-ES", "es-MX", "fr-FR", "de-DE", "pt-BR", "it-IT", "ja-JP", "nl-NL",
];
const PHRASES: &[&str] = &[
    "Hello, thanks for calling, how can I help you today?",
    "I'd like to check the status of my order.",
    "Could you confirm the address on the account, please?",
    "Let me pull that up for you, one moment.",
    "The delivery was scheduled for Tuesday but nothing arrived.",
    "I understand, I'm sorry for the inconvenience.",
    "Your reference number is on the confirmation e-mail.",
    "Is there anything else I can help you with?",
    "Sí, claro, le transfiero con el departamento de facturación.",
    "Merci de votre patience, je vérifie immédiatement.",
    "Können Sie mir bitte die Kundennummer nennen?",
    "Obrigado pela ligação, tenha um ótimo dia!",
    "お電話ありがとうございます。ご用件をお伺いします。",
    "The refund should appear within five business days.",
    "I'll escalate this to my supervisor right away.",
    "We have updated the billing cycle as you requested.",
];

/// One generated row, before insertion.
struct SeedRow {
    call_id: String,
    language: &'static str,
    status: &'static str,
    duration_ms: Option<u32>,
    confidence: Option<f32>,
    content: Option<String>,
    created_at: PrimitiveDateTime,
    updated_at: PrimitiveDateTime,
}

fn generate(rng: &mut SmallRng, now: PrimitiveDateTime) -> SeedRow {
    let status = match rng.random_range(0..100) {
        0..=79 => "completed",
        80..=87 => "in_progress",
        88..=94 => "queued",
        _ => "failed",
    };
    let finished = status == "completed";
    // A few hundred bytes to a few KiB, skewed towards short calls.
    let target_len = if rng.random_bool(0.1) {
        rng.random_range(1500..4096)
    } else {
        rng.random_range(200..1200)
    };
    let content = finished.then(|| {
        let mut text = String::with_capacity(target_len + 128);
        while text.len() < target_len {
            let speaker = if rng.random_bool(0.5) {
                "Agent"
            } else {
                "Caller"
            };
            text.push_str(speaker);
            text.push_str(": ");
            text.push_str(PHRASES[rng.random_range(0..PHRASES.len())]);
            text.push('\n');
        }
        text
    });
    let created_at = now
        - Duration::seconds(rng.random_range(0..90 * 24 * 3600))
        - Duration::milliseconds(rng.random_range(0..1000));
    SeedRow {
        call_id: format!("CA-{:012x}", rng.random::<u64>() & 0xffff_ffff_ffff),
        language: LANGUAGES[rng.random_range(0..LANGUAGES.len())],
        status,
        duration_ms: (status != "queued").then(|| rng.random_range(5_000..1_800_000)),
        confidence: finished
            .then(|| (rng.random_range(55..100) as f32) / 100.0)
            .filter(|_| rng.random_bool(0.95)),
        content,
        updated_at: created_at + Duration::milliseconds(rng.random_range(0..600_000)),
        created_at,
    }
}

async fn insert_batch(pool: &MySqlPool, rows: &[SeedRow]) -> Result<(), sqlx::Error> {
    let mut query: QueryBuilder<MySql> = QueryBuilder::new(
        "INSERT INTO transcriptions (call_id, language, status, duration_ms, confidence, content, created_at, updated_at) ",
    );
    query.push_values(rows, |mut b, row| {
        b.push_bind(&row.call_id)
            .push_bind(row.language)
            .push_bind(row.status)
            .push_bind(row.duration_ms)
            .push_bind(row.confidence)
            .push_bind(row.content.as_deref())
            .push_bind(row.created_at)
            .push_bind(row.updated_at);
    });
    query
        .build()
        .persistent(false)
        .execute(pool)
        .await
        .map(|_| ())
}

/// Inserts `rows` generated rows; shows a progress bar when stderr is a terminal.
pub async fn seed(pool: &MySqlPool, rows: u64) -> Result<(), sqlx::Error> {
    let progress = Arc::new(ProgressBar::with_draw_target(
        Some(rows),
        ProgressDrawTarget::stderr(),
    ));
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let now = time::OffsetDateTime::now_utc();
    let now = PrimitiveDateTime::new(now.date(), now.time());
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let (pool, progress) = (pool.clone(), Arc::clone(&progress));
        // Each writer takes every WRITERS-th batch; a fixed seed per writer
        // keeps a seeded table the same from run to run.
        writers.spawn(async move {
            let mut rng = SmallRng::seed_from_u64(0x5eed + writer);
            let mut batch_start = writer * BATCH_ROWS;
            while batch_start < rows {
                let count = BATCH_ROWS.min(rows - batch_start);
                let batch: Vec<SeedRow> = (0..count).map(|_| generate(&mut rng, now)).collect();
                insert_batch(&pool, &batch).await?;
                progress.inc(count);
                batch_start += WRITERS * BATCH_ROWS;
            }
            Ok::<(), sqlx::Error>(())
        });
    }
    while let Some(result) = writers.join_next().await {
        match result {
            Ok(outcome) => outcome?,
            Err(join_error) => {
                return Err(sqlx::Error::Protocol(format!(
                    "seed writer failed: {join_error}"
                )));
            }
        }
    }
    progress.finish();
    Ok(())
}
