//! Operator commands: their bodies, what the server can judge about them, and their states.
//!
//! A command is `queued` when the server stores it, `delivered` once a trainer has fetched it,
//! then `applied` (at a step) or `rejected` (with a reason). A trainer may fetch a command more
//! than once (after a reconnect); it applies each id once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Shape of the LR decay in the annealing phase.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecayShape {
    /// f = 1 − √(progress): YuLan-Mini's choice.
    #[default]
    #[serde(rename = "1-sqrt")]
    OneMinusSqrt,
    #[serde(rename = "linear")]
    Linear,
    #[serde(rename = "cosine")]
    Cosine,
}

/// What an operator asks of a running trainer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    Pause,
    Resume,
    /// Checkpoint, then exit.
    Stop,
    Checkpoint,
    /// Set the stable LR the schedule follows: absolutely, or as a multiple of the current one.
    SetLr {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lr: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        multiplier: Option<f64>,
    },
    /// Start the decay phase now; optionally switch data mix, sequence length and RoPE θ.
    Anneal {
        steps: u64,
        #[serde(default)]
        shape: DecayShape,
        final_lr: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data_mix: Option<BTreeMap<String, f64>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq_len: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rope_theta: Option<f64>,
    },
    SetDataMix {
        weights: BTreeMap<String, f64>,
    },
    SetGradClip {
        max_norm: f64,
    },
    /// Go back to the checkpoint at `to_step` and skip the next `skip_batches` batches.
    /// Without `to_step`: the newest checkpoint before `before_step` (a rule on an alert sets
    /// it to the alert's step), or the newest of all without either.
    Rewind {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to_step: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before_step: Option<u64>,
        #[serde(default)]
        skip_batches: u64,
    },
}

impl Command {
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Pause => "pause",
            Command::Resume => "resume",
            Command::Stop => "stop",
            Command::Checkpoint => "checkpoint",
            Command::SetLr { .. } => "set_lr",
            Command::Anneal { .. } => "anneal",
            Command::SetDataMix { .. } => "set_data_mix",
            Command::SetGradClip { .. } => "set_grad_clip",
            Command::Rewind { .. } => "rewind",
        }
    }

    /// Everything that can be judged without the trainer. The trainer checks the rest
    /// (unknown data sources, a rewind target without a checkpoint).
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Command::SetLr { lr, multiplier } => match (lr, multiplier) {
                (Some(lr), None) => positive("lr", *lr),
                (None, Some(m)) => positive("multiplier", *m),
                _ => Err("set_lr needs exactly one of `lr` or `multiplier`".into()),
            },
            Command::Anneal {
                steps,
                final_lr,
                data_mix,
                seq_len,
                rope_theta,
                ..
            } => {
                if *steps == 0 {
                    return Err("`steps` must be at least 1".into());
                }
                if !final_lr.is_finite() || *final_lr < 0.0 {
                    return Err("`final_lr` must be a finite number ≥ 0".into());
                }
                if let Some(mix) = data_mix {
                    weights_ok(mix)?;
                }
                if *seq_len == Some(0) {
                    return Err("`seq_len` must be at least 1".into());
                }
                match rope_theta {
                    Some(t) => positive("rope_theta", *t),
                    None => Ok(()),
                }
            }
            Command::SetDataMix { weights } => weights_ok(weights),
            Command::SetGradClip { max_norm } => positive("max_norm", *max_norm),
            Command::Pause
            | Command::Resume
            | Command::Stop
            | Command::Checkpoint
            | Command::Rewind { .. } => Ok(()),
        }
    }
}

fn positive(name: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(format!("`{name}` must be a finite number > 0, got {v}"))
    }
}

fn weights_ok(weights: &BTreeMap<String, f64>) -> Result<(), String> {
    if weights.is_empty() {
        return Err("the data mix needs at least one source".into());
    }
    for (source, w) in weights {
        if source.is_empty() {
            return Err("a data source name is empty".into());
        }
        if !(w.is_finite() && *w > 0.0) {
            return Err(format!(
                "the weight of `{source}` must be a finite number > 0, got {w}"
            ));
        }
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    Queued,
    Delivered,
    Applied,
    Rejected,
}

impl CommandStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Queued => "queued",
            CommandStatus::Delivered => "delivered",
            CommandStatus::Applied => "applied",
            CommandStatus::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => CommandStatus::Queued,
            "delivered" => CommandStatus::Delivered,
            "applied" => CommandStatus::Applied,
            "rejected" => CommandStatus::Rejected,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(self, CommandStatus::Applied | CommandStatus::Rejected)
    }
}

/// A command as stored: `GET /api/v1/runs/{id}/commands` lists these.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub id: i64,
    pub run_id: i64,
    pub command: Command,
    pub status: CommandStatus,
    #[serde(default)]
    pub applied_step: Option<u64>,
    #[serde(default)]
    pub message: Option<String>,
    /// Who issued it: "token" for API clients, "browser" for a signed-in session.
    pub issued_by: String,
    pub created_at: f64,
    pub updated_at: f64,
}

/// `POST /api/v1/runs/{id}/commands/{cid}/outcome`: the trainer reports what it did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandOutcome {
    pub status: CommandStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A rule that acts on an alert: when alert `on` fires, the server issues `do` as a command
/// of the run, through the normal path (queued, delivered, applied or rejected, audited), with
/// `issued_by` = `rule:<index>`. `GET`/`PUT /api/v1/runs/{id}/rules`; a run's config may bring
/// them as `alerts.rules`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The alert that fires it (`loss_spike`, `grad_norm_spike`, …).
    pub on: String,
    #[serde(rename = "do")]
    pub action: Command,
    /// Steps after a firing during which the rule does not fire again.
    #[serde(default)]
    pub cooldown_steps: u64,
    /// Firings over the run's life, at most (none: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_firings: Option<u32>,
}

/// `PUT /api/v1/runs/{id}/rules` and its answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    pub rules: Vec<Rule>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Command {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_bodies_of_the_design_parse() {
        assert_eq!(parse(r#"{"kind":"pause"}"#), Command::Pause);
        assert_eq!(
            parse(r#"{"kind":"set_lr","multiplier":0.5}"#),
            Command::SetLr {
                lr: None,
                multiplier: Some(0.5)
            }
        );
        let anneal = parse(
            r#"{"kind": "anneal", "steps": 2000, "shape": "1-sqrt", "final_lr": 5e-5,
                "data_mix": {"code": 0.3, "math": 0.3, "prose": 0.4}, "seq_len": 1024,
                "rope_theta": 490000}"#,
        );
        assert!(anneal.validate().is_ok());
        assert_eq!(
            parse(r#"{"kind": "rewind", "to_step": 1200, "skip_batches": 50}"#),
            Command::Rewind {
                to_step: Some(1200),
                before_step: None,
                skip_batches: 50
            }
        );
    }

    #[test]
    fn unknown_kinds_and_wrong_types_are_refused() {
        assert!(serde_json::from_str::<Command>(r#"{"kind":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Command>(r#"{"kind":"set_lr","lr":"fast"}"#).is_err());
    }

    #[test]
    fn values_the_server_can_judge_are_judged() {
        let bad = [
            r#"{"kind":"set_lr","lr":-0.1}"#,
            r#"{"kind":"set_lr"}"#,
            r#"{"kind":"set_lr","lr":0.1,"multiplier":2}"#,
            r#"{"kind":"set_data_mix","weights":{"code":0}}"#,
            r#"{"kind":"set_data_mix","weights":{}}"#,
            r#"{"kind":"set_grad_clip","max_norm":0}"#,
            r#"{"kind":"anneal","steps":0,"final_lr":0}"#,
            r#"{"kind":"anneal","steps":10,"final_lr":-1}"#,
        ];
        for body in bad {
            assert!(parse(body).validate().is_err(), "{body} should be invalid");
        }
    }
}
