//! Operator commands applied at step boundaries: effects, rejections, rewinds and branches.

use std::collections::BTreeMap;

use keel_protocol::{Command, DecayShape};
use keel_trainer::commands::Effect;
use keel_trainer::ops::Attention;

use crate::support::{self, losses};

fn mix(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn set_lr_moves_the_stable_level_absolutely_or_by_a_multiplier() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = support::trainer(support::tiny(), dir.path());
    t.apply(&Command::SetLr {
        lr: Some(0.004),
        multiplier: None,
    })
    .unwrap();
    t.apply(&Command::SetLr {
        lr: None,
        multiplier: Some(0.5),
    })
    .unwrap();
    assert_eq!(t.state.schedule.stable_lr, 0.002);
    assert!(
        t.apply(&Command::SetLr {
            lr: Some(-1.0),
            multiplier: None
        })
        .is_err()
    );
}

#[test]
fn an_anneal_with_an_unknown_source_is_rejected_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = support::trainer(support::tiny(), dir.path());
    let before = t.state.clone();
    let bad = Command::Anneal {
        steps: 10,
        shape: DecayShape::Linear,
        final_lr: 0.0,
        data_mix: Some(mix(&[("prose", 1.0), ("poetry", 1.0)])),
        seq_len: Some(16),
        rope_theta: Some(490_000.0),
    };
    let why = t.apply(&bad).unwrap_err();
    assert!(why.contains("poetry"), "{why}");
    assert_eq!(t.state, before);
}

#[test]
fn an_anneal_decays_the_lr_and_switches_mix_sequence_length_and_rope_theta() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = support::trainer(support::tiny(), dir.path());
    losses(&mut t, 12);
    let cmd = Command::Anneal {
        steps: 4,
        shape: DecayShape::Linear,
        final_lr: 0.0,
        data_mix: Some(mix(&[("code", 1.0)])),
        seq_len: Some(16),
        rope_theta: Some(490_000.0),
    };
    assert_eq!(t.apply(&cmd).unwrap().0, Effect::Continue);
    let recs: Vec<_> = (0..5).map(|_| t.step().unwrap()).collect();
    let lrs: Vec<f64> = recs.iter().map(|r| r.scalars["lr"].get()).collect();
    assert_eq!(lrs, [0.01, 0.0075, 0.005, 0.0025, 0.0]);
    assert!(
        recs.iter()
            .all(|r| r.scalars.contains_key("loss/code") && !r.scalars.contains_key("loss/prose"))
    );
    assert_eq!(t.state.seq_len, 16);
    // Batch 4 × the new sequence length of 16 tokens per step.
    assert_eq!(recs[1].tokens.unwrap() - recs[0].tokens.unwrap(), 4 * 16);
}

#[test]
fn a_rewind_to_a_missing_checkpoint_is_rejected_with_the_steps_that_exist() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = support::trainer(support::tiny(), dir.path());
    losses(&mut t, 3);
    t.checkpoint().unwrap();
    losses(&mut t, 2);
    let why = t
        .apply(&Command::Rewind {
            to_step: Some(2),
            before_step: None,
            skip_batches: 0,
        })
        .unwrap_err();
    assert!(
        why.contains("no checkpoint at step 2") && why.contains('3'),
        "{why}"
    );
}

#[test]
fn a_rewind_restores_the_checkpoint_skips_batches_and_starts_a_new_branch() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = support::trainer(support::tiny(), dir.path());
    losses(&mut t, 4);
    let ckpt = t.checkpoint().unwrap();
    let after_ckpt = losses(&mut t, 6);

    // Rewind with no skip: the very same batches and weights, so the very same losses.
    t.apply(&Command::Rewind {
        to_step: Some(4),
        before_step: None,
        skip_batches: 0,
    })
    .unwrap();
    assert_eq!((t.state.step, t.state.branch), (4, 1));
    assert_eq!(losses(&mut t, 6), after_ckpt);

    // Skipping 2 batches: step 4 now trains on batch 6.
    t.apply(&Command::Rewind {
        to_step: Some(4),
        before_step: None,
        skip_batches: 2,
    })
    .unwrap();
    assert_eq!(
        (t.state.step, t.state.branch, t.state.batch_offset),
        (4, 2, 2)
    );
    let skipped = losses(&mut t, 3);
    // The same weights fed batches 6, 7, 8 from step 4: a trainer resumed from the
    // checkpoint and told to draw two batches ahead gives the very same losses.
    let mut ahead =
        keel_trainer::trainer::Trainer::resume(&ckpt, &candle_core::Device::Cpu, None).unwrap();
    ahead.state.batch_offset = 2;
    assert_eq!(skipped, losses(&mut ahead, 3));
    assert_ne!(skipped[0], after_ckpt[0]);
}

#[test]
fn a_rewind_forward_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = support::trainer(support::tiny(), dir.path());
    losses(&mut t, 2);
    assert!(
        t.apply(&Command::Rewind {
            to_step: Some(50),
            before_step: None,
            skip_batches: 0
        })
        .unwrap_err()
        .contains("forward")
    );
}

#[test]
fn a_checkpoint_taken_on_command_survives_pruning_so_it_can_be_rewound_to() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = support::tiny();
    cfg.checkpoint.keep = 1;
    let mut t = support::trainer(cfg, dir.path());
    losses(&mut t, 2);
    t.apply(&Command::Checkpoint).unwrap();
    for _ in 0..3 {
        losses(&mut t, 1);
        t.checkpoint().unwrap();
    }
    let steps: Vec<u64> = keel_trainer::checkpoint::list(dir.path())
        .iter()
        .map(|c| c.step)
        .collect();
    assert_eq!(steps, [2, 5]);
    assert!(
        t.apply(&Command::Rewind {
            to_step: Some(2),
            before_step: None,
            skip_batches: 1
        })
        .is_ok()
    );
}

#[test]
fn a_rewind_without_a_step_goes_to_the_newest_checkpoint_before_the_one_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = support::trainer(support::tiny(), dir.path());
    losses(&mut t, 4);
    t.checkpoint().unwrap();
    losses(&mut t, 4);
    t.checkpoint().unwrap();
    losses(&mut t, 2);
    // Before step 8 (a spike there): the checkpoint at 4.
    t.apply(&Command::Rewind {
        to_step: None,
        before_step: Some(8),
        skip_batches: 1,
    })
    .unwrap();
    assert_eq!((t.state.step, t.state.branch), (4, 1));
    losses(&mut t, 6);
    // Without either: the newest of the live history. The one at 8 belongs to the branch
    // abandoned at 4, so it is 4 again.
    t.apply(&Command::Rewind {
        to_step: None,
        before_step: None,
        skip_batches: 0,
    })
    .unwrap();
    assert_eq!((t.state.step, t.state.branch), (4, 2));
    // A checkpoint of the live branch is the newest once there is one.
    losses(&mut t, 3);
    t.checkpoint().unwrap();
    losses(&mut t, 2);
    t.apply(&Command::Rewind {
        to_step: None,
        before_step: None,
        skip_batches: 0,
    })
    .unwrap();
    assert_eq!(t.state.step, 7);
    // Before step 3 there is none: rejected with the reason.
    let why = t
        .apply(&Command::Rewind {
            to_step: None,
            before_step: Some(3),
            skip_batches: 0,
        })
        .unwrap_err();
    assert!(why.contains("no checkpoint before step 3"), "{why}");
}

fn anneal(steps: u64, final_lr: f64, seq_len: Option<u32>) -> Command {
    Command::Anneal {
        steps,
        shape: DecayShape::Linear,
        final_lr,
        data_mix: None,
        seq_len,
        rope_theta: None,
    }
}

#[test]
fn a_second_anneal_during_the_decay_continues_from_the_current_lr_and_never_rises() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = support::trainer(support::tiny(), dir.path());
    losses(&mut t, 12);
    t.apply(&anneal(4, 0.0, None)).unwrap();
    losses(&mut t, 2);
    // At step 14 the first decay is at 0.005; the second one starts there.
    t.apply(&anneal(2, 0.001, None)).unwrap();
    let lrs: Vec<f64> = (0..4)
        .map(|_| t.step().unwrap().scalars["lr"].get())
        .collect();
    assert_eq!(lrs, [0.005, 0.003, 0.001, 0.001]);
    // A final LR above the current one is not an anneal.
    let before = t.state.clone();
    let why = t.apply(&anneal(4, 0.002, None)).unwrap_err();
    assert!(why.contains("set_lr"), "{why}");
    assert_eq!(t.state, before);
}

#[test]
fn an_anneal_to_a_context_beyond_max_seq_len_or_memory_is_refused_with_the_estimate() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = support::tiny();
    cfg.model.max_seq_len = Some(1 << 20);
    let mut t = support::trainer(cfg, dir.path());
    // Past the config's limit.
    let mut capped = support::tiny();
    capped.model.max_seq_len = Some(64);
    let mut c = support::trainer(capped, dir.path());
    let why = c.apply(&anneal(4, 0.0, Some(65))).unwrap_err();
    assert!(why.contains("max_seq_len of 64"), "{why}");
    assert_eq!(c.state.seq_len, 32);
    assert!(c.apply(&anneal(4, 0.0, Some(64))).is_ok());
    // YuLan-Mini's own context switch on proxy-tiny: the batched score matrices alone would
    // be 2 × 2 heads × 4 × 28,672² floats per layer, far more than this machine has; the
    // streaming attention needs about 1.2 GB, so that is what the run switches to.
    let (_, msg) = t.apply(&anneal(4, 0.0, Some(28_672))).unwrap();
    assert!(msg.unwrap().contains("attention streaming"));
    assert_eq!(t.model.attention(), Attention::Streaming);
    assert_eq!(
        (t.state.seq_len, t.state.attention),
        (28_672, Attention::Streaming)
    );
    // A model whose activations do not fit even streaming is refused, with both estimates.
    let mut wide = support::tiny();
    wide.model.d_model = 256;
    wide.model.d_ffn = 640;
    wide.run.batch_size = 16;
    wide.model.max_seq_len = Some(1 << 20);
    let mut w = support::trainer(wide, dir.path());
    let before = w.state.clone();
    let why = w.apply(&anneal(4, 0.0, Some(28_672))).unwrap_err();
    assert!(
        why.contains("needs about") && why.contains("with the streaming attention"),
        "{why}"
    );
    assert_eq!(w.state, before);
}

#[test]
fn an_explicit_rewind_never_loads_a_checkpoint_of_an_abandoned_branch() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = support::trainer(support::tiny(), dir.path());
    losses(&mut t, 4);
    t.checkpoint().unwrap();
    losses(&mut t, 4);
    t.checkpoint().unwrap(); // step 8, branch 0
    t.apply(&Command::Rewind {
        to_step: Some(4),
        before_step: None,
        skip_batches: 3,
    })
    .unwrap();
    losses(&mut t, 6); // at step 10 on branch 1, which has no checkpoint of its own
    // Step 8 of branch 0 is not this run's history any more.
    let why = t
        .apply(&Command::Rewind {
            to_step: Some(8),
            before_step: None,
            skip_batches: 0,
        })
        .unwrap_err();
    assert!(
        why.contains("abandoned") && why.contains("live history: 4"),
        "{why}"
    );
    // A branch that reaches step 8 again: its checkpoint sits beside the old one.
    t.apply(&Command::Rewind {
        to_step: Some(4),
        before_step: None,
        skip_batches: 0,
    })
    .unwrap();
    losses(&mut t, 4);
    t.checkpoint().unwrap();
    let saved: Vec<(u64, u32)> = keel_trainer::checkpoint::list(dir.path())
        .iter()
        .map(|c| (c.step, c.branch))
        .collect();
    assert_eq!(saved, [(4, 0), (8, 0), (8, 2)]);
    losses(&mut t, 1);
    let want = {
        let mut again = keel_trainer::trainer::Trainer::resume(
            &keel_trainer::checkpoint::path_for(dir.path(), 8, 2),
            &candle_core::Device::Cpu,
            None,
        )
        .unwrap();
        losses(&mut again, 2)
    };
    t.apply(&Command::Rewind {
        to_step: Some(8),
        before_step: None,
        skip_batches: 0,
    })
    .unwrap();
    assert_eq!(losses(&mut t, 2), want);
}
