//! Applying operator commands to a [`Trainer`] at a step boundary.
//!
//! Each command either changes the run state and is `applied` at the current step, or is
//! `rejected` with a reason an operator can act on (an unknown data source, a rewind target
//! without a checkpoint). A command is checked whole before anything changes, so a rejected
//! `anneal` leaves no half-applied mix behind. Pausing and stopping are the loop's business:
//! this module only reports that they were asked for.

use keel_protocol::Command;

use crate::checkpoint;
use crate::memory;
use crate::ops::{Attention, Kernels};
use crate::trainer::Trainer;

/// What the loop must do after a command was applied.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Continue,
    Pause,
    Resume,
    /// Checkpoint, then exit.
    Stop,
}

/// An applied command's effect and a message for the command log.
pub type Applied = (Effect, Option<String>);

impl Trainer {
    /// Apply one command now; `Err` is the rejection reason.
    pub fn apply(&mut self, cmd: &Command) -> Result<Applied, String> {
        cmd.validate()?;
        match cmd {
            Command::Pause => Ok((Effect::Pause, None)),
            Command::Resume => Ok((Effect::Resume, None)),
            Command::Stop => Ok((Effect::Stop, None)),
            Command::Checkpoint => {
                let path = self
                    .checkpoint_pinned()
                    .map_err(|e| format!("checkpoint failed: {e:#}"))?;
                Ok((Effect::Continue, Some(format!("saved {}", path.display()))))
            }
            Command::SetLr { lr, multiplier } => {
                let level = self.state.schedule.stable_lr;
                self.state.schedule.stable_lr = lr.unwrap_or(level * multiplier.unwrap_or(1.0));
                let msg = format!("stable LR {level} → {}", self.state.schedule.stable_lr);
                Ok((Effect::Continue, Some(msg)))
            }
            Command::SetGradClip { max_norm } => {
                self.state.grad_clip = *max_norm;
                Ok((Effect::Continue, None))
            }
            Command::SetDataMix { weights } => {
                self.data.set_weights(weights)?;
                self.state.data_weights = self.data.weights();
                Ok((Effect::Continue, None))
            }
            Command::Anneal { .. } => self.anneal(cmd),
            Command::Rewind {
                to_step,
                before_step,
                skip_batches,
            } => {
                let to_step = match to_step {
                    Some(s) => *s,
                    None => self.newest_checkpoint(*before_step)?,
                };
                self.rewind(to_step, *skip_batches)
            }
        }
    }

    fn anneal(&mut self, cmd: &Command) -> Result<Applied, String> {
        let Command::Anneal {
            steps,
            shape,
            final_lr,
            data_mix,
            seq_len,
            rope_theta,
        } = cmd
        else {
            unreachable!("anneal called with {}", cmd.kind());
        };
        // Everything that can be refused is checked before anything changes.
        let step = self.state.step;
        let mut schedule = self.state.schedule;
        schedule.anneal(step, *steps, *shape, *final_lr)?;
        let attention = match seq_len {
            Some(t) => self.check_seq_len(*t as usize)?,
            None => self.state.attention,
        };
        if let Some(mix) = data_mix {
            self.data.set_weights(mix)?;
            self.state.data_weights = self.data.weights();
        }
        self.state.schedule = schedule;
        if let Some(t) = seq_len {
            self.state.seq_len = *t as usize;
        }
        let switched = attention != self.state.attention;
        self.state.attention = attention;
        self.model.set_attention(attention);
        if let Some(theta) = rope_theta {
            self.state.rope_theta = *theta;
            self.model.set_rope_theta(*theta);
        }
        let end = step + steps;
        let mut msg = format!("decay over steps {step}..{end}");
        if switched {
            let how = match attention {
                Attention::Streaming => "streaming (the batched scores would not fit)",
                Attention::Batched => "batched",
            };
            msg.push_str(&format!("; attention {how}"));
        }
        Ok((Effect::Continue, Some(msg)))
    }

    /// A new sequence length must be within the config's `max_seq_len`, and a step at that
    /// length must fit in the memory the device has (see [`crate::memory`]): with the batched
    /// attention, or else the streaming one, which is what the step then runs.
    fn check_seq_len(&self, len: usize) -> Result<Attention, String> {
        let max = self.cfg.model.max_seq_len();
        if len > max {
            return Err(format!(
                "seq_len {len} is above this run's model.max_seq_len of {max}"
            ));
        }
        // In the parameters' dtype: under bf16 compute the attention's score matrices (most of
        // a long context's memory) are f32 all the same, so this errs on the safe side.
        let dtype = self.params.dtype();
        let available = memory::available_bytes(&self.device);
        // With gradient accumulation only one slice's activations are alive at a time.
        let batch = self.cfg.run.batch_size / self.cfg.run.micro_batches.max(1);
        let streaming_ok = self.model.kernels() == Kernels::Fused;
        memory::fit(
            &self.cfg.model,
            batch,
            (self.state.seq_len, self.state.attention),
            len,
            dtype,
            available,
            streaming_ok,
        )
    }

    /// Whether a checkpoint is on the live history: written on this branch or an earlier one,
    /// at a step no later rewind went back past. Branches form a chain (a rewind always starts
    /// from the live one), so a checkpoint of an older branch past a later rewind's step was
    /// abandoned.
    fn is_live(&self, c: &checkpoint::Saved) -> bool {
        c.branch <= self.state.branch
            && self
                .state
                .forks
                .iter()
                .all(|&(started, from)| c.branch >= started || c.step <= from)
    }

    /// The newest checkpoint at or before the run's step, and before `before` when given: what
    /// a rewind without `to_step` goes back to (a spike's rule: the last one before the spike).
    fn newest_checkpoint(&self, before: Option<u64>) -> Result<u64, String> {
        let limit = before.map_or(self.state.step, |b| {
            b.saturating_sub(1).min(self.state.step)
        });
        checkpoint::list(&self.checkpoint_dir)
            .into_iter()
            .filter(|c| c.step <= limit && self.is_live(c))
            .map(|c| c.step)
            .max()
            .ok_or_else(|| match before {
                Some(b) => format!("no checkpoint before step {b} to rewind to"),
                None => "no checkpoint to rewind to".into(),
            })
    }

    /// Go back to the live checkpoint taken after `to_step` updates and skip `skip` batches.
    ///
    /// Weights, moments, step, tokens and data position come from the checkpoint; the
    /// operator's current settings (LR level, decay, mix, clip, sequence length, RoPE θ) and
    /// the record of applied commands are kept — the usual remedy for a spike is "lower the
    /// LR, rewind, skip", and a rewind must not undo the first part. The branch goes up by one.
    fn rewind(&mut self, to_step: u64, skip: u64) -> Result<Applied, String> {
        if to_step > self.state.step {
            return Err(format!(
                "cannot rewind forward: the run is at step {}, asked for {to_step}",
                self.state.step
            ));
        }
        let all = checkpoint::list(&self.checkpoint_dir);
        let live: Vec<&checkpoint::Saved> = all.iter().filter(|c| self.is_live(c)).collect();
        let Some(target) = live.iter().rev().find(|c| c.step == to_step) else {
            let have: Vec<String> = live.iter().map(|c| c.step.to_string()).collect();
            let have = if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            };
            if let Some(dead) = all.iter().find(|c| c.step == to_step) {
                return Err(format!(
                    "the checkpoint at step {to_step} is of branch {}, which a rewind \
                     abandoned; checkpoints on this run's live history: {have}",
                    dead.branch
                ));
            }
            return Err(format!(
                "no checkpoint at step {to_step}; checkpoints at: {have}"
            ));
        };
        let path = target.path.clone();
        let loaded = checkpoint::load(&path, &self.device).map_err(|e| format!("{e:#}"))?;
        let keep = self.state.clone();
        let offset = loaded.state.batch_offset + skip;
        self.restore(loaded).map_err(|e| format!("{e:#}"))?;
        let restored = std::mem::replace(&mut self.state, keep);
        self.state.step = restored.step;
        self.state.tokens = restored.tokens;
        self.state.batch_offset = offset;
        self.state.optimizer_steps = restored.optimizer_steps;
        self.state.branch = self.state.branch.max(restored.branch) + 1;
        self.state.forks.push((self.state.branch, to_step));
        // `restore` put the checkpoint's mix and θ into the data and model: put ours back.
        self.data.set_weights(&self.state.data_weights)?;
        self.model.set_rope_theta(self.state.rope_theta);
        self.model.set_attention(self.state.attention);
        let msg = format!(
            "at step {to_step}, skipping {skip} batches, branch {}",
            self.state.branch
        );
        Ok((Effect::Continue, Some(msg)))
    }
}
