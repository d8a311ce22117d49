//! The server link's spill file. Spilling and re-sending against a real server, and the
//! command round trip, are tested end to end in the workspace's `tests/e2e`.

use std::collections::BTreeMap;

use keel_protocol::{IngestBatch, Metric, StepRecord};
use keel_trainer::link::Spill;

fn record(step: u64, loss: f64) -> StepRecord {
    StepRecord {
        step,
        time: Some(1.0),
        tokens: Some(step * 10),
        scalars: BTreeMap::from([("loss".to_string(), Metric::new(loss))]),
        layers: BTreeMap::from([(
            "hidden_var".to_string(),
            vec![Metric(1.0), Metric(f64::INFINITY)],
        )]),
    }
}

#[test]
fn the_spill_file_round_trips_batches_with_non_finite_values() {
    let dir = tempfile::tempdir().unwrap();
    let spill = Spill::new(&dir.path().join("sub/spill.jsonl"));
    assert!(spill.is_empty());
    let a = IngestBatch {
        branch: Some(0),
        steps: vec![record(0, f64::NAN), record(1, 2.0)],
    };
    let b = IngestBatch {
        branch: Some(1),
        steps: vec![record(1, f64::NEG_INFINITY)],
    };
    spill.append(&a).unwrap();
    spill.append(&b).unwrap();
    assert_eq!(spill.read().unwrap(), vec![a, b.clone()]);
    spill.rewrite(std::slice::from_ref(&b)).unwrap();
    assert_eq!(spill.read().unwrap(), vec![b]);
    spill.rewrite(&[]).unwrap();
    assert!(spill.is_empty() && !spill.path().exists());
}
