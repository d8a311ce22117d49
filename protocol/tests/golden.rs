//! Golden fixtures: each file under `fixtures/` parses into its wire type and serialises back
//! to the same JSON, so any change to the wire shows up here in review.

use keel_protocol::{
    Command, CommandRecord, IngestBatch, LaunchRecord, LaunchRequest, LayerMatrix, LiveMessage,
    RunSpec, ScalarSeries, StepRecord,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn round_trip<T: DeserializeOwned + Serialize>(file: &str) {
    let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let golden: Value = serde_json::from_str(&text).unwrap();
    let parsed: T = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    let back = serde_json::to_value(&parsed).unwrap();
    assert_eq!(back, golden, "{file} does not serialise back to itself");
}

#[test]
fn a_step_record_round_trips() {
    round_trip::<StepRecord>("step_record.json");
}

#[test]
fn an_ingest_batch_round_trips() {
    round_trip::<IngestBatch>("ingest_batch.json");
}

#[test]
fn a_run_spec_round_trips() {
    round_trip::<RunSpec>("run_spec.json");
}

#[test]
fn every_command_of_the_design_round_trips_and_validates() {
    round_trip::<Vec<Command>>("commands.json");
    let path = format!(
        "{}/tests/fixtures/commands.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let commands: Vec<Command> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for c in &commands {
        assert!(c.validate().is_ok(), "{c:?}");
    }
}

#[test]
fn a_command_record_round_trips() {
    round_trip::<CommandRecord>("command_record.json");
}

#[test]
fn live_messages_round_trip() {
    round_trip::<Vec<LiveMessage>>("live_messages.json");
}

#[test]
fn query_answers_round_trip_with_non_finite_values() {
    round_trip::<ScalarSeries>("scalar_series.json");
    round_trip::<LayerMatrix>("layer_matrix.json");
}

#[test]
fn a_launch_record_round_trips() {
    round_trip::<LaunchRecord>("launch_record.json");
}

#[test]
fn a_launch_request_takes_steps_between_one_and_ten_million() {
    let parse = |s: &str| serde_json::from_str::<LaunchRequest>(s);
    assert!(
        parse(r#"{"grid": "stability"}"#)
            .unwrap()
            .validate()
            .is_ok()
    );
    assert!(
        parse(r#"{"grid": "g", "steps": 1}"#)
            .unwrap()
            .validate()
            .is_ok()
    );
    let most = r#"{"grid": "g", "steps": 10000000}"#;
    assert!(parse(most).unwrap().validate().is_ok());
    for steps in ["0", "10000001"] {
        let r = parse(&format!(r#"{{"grid": "g", "steps": {steps}}}"#)).unwrap();
        assert!(r.validate().unwrap_err().contains("steps"), "{steps}");
    }
    assert!(parse(r#"{"grid": "g", "steps": -1}"#).is_err());
    assert!(parse(r#"{"grid": "g", "parallel": 2}"#).is_err());
}
