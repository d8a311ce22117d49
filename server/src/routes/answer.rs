//! Series answers written in pieces, so that no answer is ever held whole.
//!
//! An answer of at most [`HOLD_VALUES`] numbers is read once, held and written. A larger
//! JSON answer is columnar (`step`, then `min`, …), so it is written one field at a time,
//! each field one chunk of buckets at a time ([`Plan::chunks`]): a field costs one more read of
//! the chunks, all inside one read transaction, so every field sees the same snapshot of the
//! run even while steps keep arriving. A CSV answer is written in one pass. Pieces go to the
//! client through a channel of a few pieces: a client that reads slowly slows the reading,
//! and one that reads nothing for [`DEADLINE`] is cut off, which frees its read connection.

use std::time::Duration;

use crate::storage::Snapshot;
use crate::storage::Store;
use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use keel_protocol::{LayerMatrix, ScalarSeries};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::storage::series::{self, Plan};
use crate::storage::summary::Summary;
use crate::views::csv;

/// The longest an answer may take to be written, slow client included.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// Bytes gathered before a piece is handed to the client.
const PIECE: usize = 64 * 1024;
/// Numbers of an answer small enough to read once and hold (4 MB of them as f64s): a
/// 100,000-bucket scalar series is; a layer matrix of 24 layers is up to 7,000 buckets.
const HOLD_VALUES: u64 = 1 << 19;

/// What a series answer is of: a scalar or a layer statistic, and its name.
#[derive(Clone)]
pub enum Series {
    Scalar(String),
    Layers(String, u32),
}

#[derive(Clone, Copy)]
pub enum Shape {
    Json,
    Csv,
}

/// The client has gone, or the deadline passed: stop reading.
struct Gone;

/// Where a producer writes: bytes gathered into pieces and sent on.
struct Sink {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl Sink {
    fn push(&mut self, s: &str) {
        self.buf.extend_from_slice(s.as_bytes());
    }

    fn json(&mut self, v: &impl Serialize) {
        // Writing to a Vec cannot fail and the values here always serialize.
        let _ = serde_json::to_writer(&mut self.buf, v);
    }

    /// Hands the gathered bytes on once there are enough of them (or always, at the end),
    /// in pieces of at most [`PIECE`].
    async fn flush(&mut self, all: bool) -> Result<(), Gone> {
        if self.buf.len() < PIECE && (!all || self.buf.is_empty()) {
            return Ok(());
        }
        let mut gathered = Bytes::from(std::mem::take(&mut self.buf));
        while !gathered.is_empty() {
            let piece = gathered.split_to(gathered.len().min(PIECE));
            self.tx.send(Ok(piece)).await.map_err(|_| Gone)?;
        }
        Ok(())
    }
}

enum Failure {
    Gone,
    Read(crate::storage::StoreError),
}

impl From<Gone> for Failure {
    fn from(_: Gone) -> Self {
        Failure::Gone
    }
}

impl From<crate::storage::StoreError> for Failure {
    fn from(e: crate::storage::StoreError) -> Self {
        Failure::Read(e)
    }
}

/// The answer for `plan`, streamed. Everything that can be refused (an unknown run, series
/// or branch) has been by the time there is a plan, so the status is always 200; a read that
/// fails half-way ends the body early, which the client sees as a broken transfer.
pub fn respond(store: Store, plan: Plan, series: Series, shape: Shape) -> Response {
    let (tx, rx) = mpsc::channel(4);
    let sink = Sink {
        tx: tx.clone(),
        buf: Vec::with_capacity(PIECE),
    };
    tokio::spawn(async move {
        let written = tokio::time::timeout(DEADLINE, write(&store, &plan, &series, shape, sink));
        let error = match written.await {
            Ok(Ok(())) | Ok(Err(Failure::Gone)) => return,
            Ok(Err(Failure::Read(e))) => {
                tracing::warn!(run = plan.run_id, "a series answer failed half-way: {e}");
                std::io::Error::other(e.to_string())
            }
            Err(_) => std::io::Error::other("the answer took longer than its deadline"),
        };
        let _ = tx.send(Err(error)).await;
    });
    let mut rx = rx;
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let content_type = match shape {
        Shape::Json => "application/json",
        Shape::Csv => "text/csv; charset=utf-8",
    };
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn write(
    store: &Store,
    plan: &Plan,
    series: &Series,
    shape: Shape,
    mut sink: Sink,
) -> Result<(), Failure> {
    let mut snap = store.snapshot().await?;
    match (shape, series) {
        // A small answer is read once and held; only a large one is read a field at a time.
        (Shape::Json, _) if plan.answer_values() <= HOLD_VALUES => {
            let buckets = snap.read_every(plan).await?;
            match series {
                Series::Scalar(key) => sink.json(&series::scalar_columns(plan, key, &buckets)),
                Series::Layers(stat, layers) => {
                    sink.json(&series::layer_columns(plan, stat, *layers, &buckets))
                }
            }
        }
        (Shape::Json, Series::Scalar(key)) => {
            sink.push("{\"key\":");
            sink.json(key);
            sink.push(&format!(",\"branch\":{}", plan.branch));
            let fields: [Field<ScalarSeries>; 5] = [
                ("step", |s, out| list(out, &s.step)),
                ("min", |s, out| list(out, &s.min)),
                ("max", |s, out| list(out, &s.max)),
                ("mean", |s, out| list(out, &s.mean)),
                ("last", |s, out| list(out, &s.last)),
            ];
            let chunk = |b: &[Summary]| series::scalar_columns(plan, key, b);
            columnar(&mut sink, &mut snap, plan, &fields, chunk, |s| s.step.len()).await?;
            sink.push("}");
        }
        (Shape::Json, Series::Layers(stat, layers)) => {
            sink.push("{\"stat\":");
            sink.json(stat);
            sink.push(&format!(",\"branch\":{},\"layers\":{layers}", plan.branch));
            let fields: [Field<LayerMatrix>; 4] = [
                ("step", |m, out| list(out, &m.step)),
                ("min", |m, out| list(out, &m.min)),
                ("max", |m, out| list(out, &m.max)),
                ("mean", |m, out| list(out, &m.mean)),
            ];
            let chunk = |b: &[Summary]| series::layer_columns(plan, stat, *layers, b);
            columnar(&mut sink, &mut snap, plan, &fields, chunk, |m| m.step.len()).await?;
            sink.push("}");
        }
        (Shape::Csv, series) => {
            let mut text = String::new();
            text.push_str(match series {
                Series::Scalar(_) => csv::SCALARS_HEADER,
                Series::Layers(..) => csv::LAYERS_HEADER,
            });
            for cols in plan.chunks() {
                let buckets: Vec<Summary> = snap.read(plan, cols).await?;
                match series {
                    Series::Scalar(key) => {
                        csv::scalar_rows(&mut text, &series::scalar_columns(plan, key, &buckets))
                    }
                    Series::Layers(stat, layers) => csv::layer_rows(
                        &mut text,
                        &series::layer_columns(plan, stat, *layers, &buckets),
                    ),
                }
                sink.push(&text);
                text.clear();
                sink.flush(false).await?;
            }
        }
    }
    sink.flush(true).await?;
    Ok(())
}

/// One field of a columnar answer: its name, and how to write a chunk's values of it.
type Field<T> = (&'static str, fn(&T, &mut Sink));

/// Writes `,"name":[…]` for each field in turn, each from every chunk read again (inside
/// the one transaction, so every field sees the same buckets).
async fn columnar<T>(
    sink: &mut Sink,
    snap: &mut Snapshot,
    plan: &Plan,
    fields: &[Field<T>],
    chunk: impl Fn(&[Summary]) -> T,
    len: fn(&T) -> usize,
) -> Result<(), Failure> {
    for (name, field) in fields {
        sink.push(&format!(",\"{name}\":["));
        let mut first = true;
        for cols in plan.chunks() {
            let part = chunk(&snap.read(plan, cols).await?);
            if len(&part) > 0 {
                if !std::mem::take(&mut first) {
                    sink.push(",");
                }
                field(&part, sink);
            }
            sink.flush(false).await?;
        }
        sink.push("]");
    }
    Ok(())
}

/// The elements of a chunk, comma-separated, without brackets.
fn list<T: Serialize>(sink: &mut Sink, values: &[T]) {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            sink.push(",");
        }
        sink.json(v);
    }
}
