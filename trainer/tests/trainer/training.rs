//! Whole training steps: reproducibility, resume, and data sampling.

use std::collections::BTreeMap;

use candle_core::Device;
use keel_trainer::data::DataMix;
use keel_trainer::trainer::Trainer;

use crate::support::{self, losses};

#[test]
fn the_same_config_and_seed_give_identical_losses() {
    let dir = tempfile::tempdir().unwrap();
    let a = losses(&mut support::trainer(support::tiny(), dir.path()), 12);
    let b = losses(&mut support::trainer(support::tiny(), dir.path()), 12);
    assert_eq!(a, b);
    let mut other = support::tiny();
    other.run.seed = 2;
    assert_ne!(a, losses(&mut support::trainer(other, dir.path()), 12));
}

#[test]
fn the_loss_falls_on_the_tiny_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let l = losses(&mut support::trainer(support::tiny(), dir.path()), 60);
    let first: f64 = l[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = l[55..].iter().sum::<f64>() / 5.0;
    // ln 256 ≈ 5.55 at the start; byte-level generated text is far more predictable.
    assert!(first > 5.0 && last < 3.5, "first {first}, last {last}");
}

#[test]
fn optimizer_state_holds_no_autograd_graph_so_memory_stays_flat() {
    // A moment built from a parameter's gradient without detaching it keeps that step's whole
    // forward graph alive, and the next step's moment keeps this one: memory grows every step.
    let dir = tempfile::tempdir().unwrap();
    let mut t = support::trainer(support::tiny(), dir.path());
    losses(&mut t, 3);
    let state = t.opt.state_tensors();
    assert!(!state.is_empty());
    for (name, m) in &state {
        assert!(!m.track_op(), "{name} records the ops that produced it");
    }
}

#[test]
fn resuming_from_a_checkpoint_gives_the_same_losses_as_training_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut straight = support::trainer(support::tiny(), dir.path());
    let mut want = losses(&mut straight, 10);
    let saved = straight.checkpoint().unwrap();
    want.extend(losses(&mut straight, 10));

    let mut resumed = Trainer::resume(&saved, &Device::Cpu, None).unwrap();
    assert_eq!(resumed.state.step, 10);
    assert_eq!(losses(&mut resumed, 10), want[10..]);
}

#[test]
fn batches_are_a_pure_function_of_seed_index_and_mix() {
    let cfg = support::tiny();
    let mix = DataMix::new(&cfg.data, 7).unwrap();
    let again = DataMix::new(&cfg.data, 7).unwrap();
    assert_eq!(
        mix.batch(41, 4, 16).unwrap(),
        again.batch(41, 4, 16).unwrap()
    );
    assert_ne!(mix.batch(41, 4, 16).unwrap(), mix.batch(42, 4, 16).unwrap());
    let b = mix.batch(3, 4, 16).unwrap();
    // Targets are the inputs shifted by one token.
    assert_eq!(b.inputs[1..16], b.targets[..15]);
}

#[test]
fn a_mix_with_one_source_samples_only_that_source_and_unknown_names_are_refused() {
    let cfg = support::tiny();
    let mut mix = DataMix::new(&cfg.data, 7).unwrap();
    mix.set_weights(&BTreeMap::from([("code".to_string(), 1.0)]))
        .unwrap();
    let code = mix.names().iter().position(|n| n == "code").unwrap();
    assert!(
        mix.batch(0, 16, 8)
            .unwrap()
            .sources
            .iter()
            .all(|s| *s == code)
    );
    let err = mix
        .set_weights(&BTreeMap::from([("poetry".to_string(), 1.0)]))
        .unwrap_err();
    assert!(err.contains("unknown data source `poetry`"), "{err}");
}

#[test]
fn text_and_jsonl_sources_are_read_from_files_and_globs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "alpha beta gamma ".repeat(10)).unwrap();
    std::fs::write(dir.path().join("b.txt"), "delta epsilon ".repeat(10)).unwrap();
    std::fs::write(
        dir.path().join("c.jsonl"),
        "{\"text\": \"omicron\"}\n\n{\"text\": \"upsilon\"}\n",
    )
    .unwrap();
    let cfg_text = format!(
        "[[data.sources]]\nname = 'txt'\nkind = 'text'\npath = '{0}/*.txt'\n\
         [[data.sources]]\nname = 'js'\nkind = 'jsonl'\npath = '{0}/c.jsonl'\n",
        dir.path().display()
    );
    let path = dir.path().join("cfg.toml");
    std::fs::write(&path, cfg_text).unwrap();
    let cfg = keel_trainer::load_config(&path).unwrap();
    let mix = DataMix::new(&cfg.data, 1).unwrap();
    let js = mix.names().iter().position(|n| n == "js").unwrap();
    // 26 bytes: long enough that a row of the JSONL corpus ("omicron\n\nupsilon\n\n", 18
    // bytes, cycled) holds both of its words whole, wherever it starts.
    let seq = 26;
    let (mut from_js, mut from_txt) = (0, 0);
    for index in 0..4 {
        let b = mix.batch(index, 8, seq).unwrap();
        for (row, source) in b.sources.iter().enumerate() {
            let tokens = &b.inputs[row * seq..(row + 1) * seq];
            let text = String::from_utf8(tokens.iter().map(|t| *t as u8).collect()).unwrap();
            let jsonl = text.contains("omicron") && text.contains("upsilon");
            let files = ["alpha", "beta", "gamma", "delta", "epsilon"]
                .iter()
                .any(|w| text.contains(w));
            if *source == js {
                assert!(jsonl && !files, "a JSONL row: {text:?}");
                from_js += 1;
            } else {
                assert!(files && !text.contains("omicron"), "a text row: {text:?}");
                from_txt += 1;
            }
        }
    }
    assert!(
        from_js > 0 && from_txt > 0,
        "{from_js} JSONL rows, {from_txt} text rows"
    );
}

#[test]
fn a_huggingface_tokenizer_json_sets_the_vocabulary_and_the_token_ids() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "unk_token": "[UNK]",
        "vocab": {"[UNK]": 0, "the": 1, "cat": 2, "dog": 3, ".": 4}}}"#;
    std::fs::write(dir.path().join("tokenizer.json"), tokenizer).unwrap();
    let tok = keel_trainer::data::Tokenizer::load(Some(
        dir.path().join("tokenizer.json").to_str().unwrap(),
    ))
    .unwrap();
    assert_eq!(tok.vocab_size(), 5);
    assert_eq!(
        tok.encode("the cat sees the dog.").unwrap(),
        [1, 2, 0, 1, 3, 4]
    );

    let mut cfg = support::tiny();
    cfg.data.tokenizer = Some(dir.path().join("tokenizer.json").to_string_lossy().into());
    let mut t = support::trainer(cfg, dir.path());
    assert_eq!(t.cfg.model.vocab_size, 5);
    assert!(losses(&mut t, 2).iter().all(|l| l.is_finite()));
}

#[test]
fn an_alerts_table_becomes_the_runs_config_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cfg.toml");
    let tiny = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/proxy-tiny.toml"
    ))
    .unwrap();
    std::fs::write(
        &path,
        tiny + "\n[alerts]\nspike_sigmas = 6.0\n\
         [[alerts.rules]]\non = \"loss_spike\"\ncooldown_steps = 100\n\
         do = { kind = \"set_lr\", multiplier = 0.5 }\n",
    )
    .unwrap();
    let cfg = keel_trainer::load_config(&path).unwrap();
    let json = cfg.to_json();
    assert_eq!(json["alerts"]["spike_sigmas"], 6.0);
    assert_eq!(json["alerts"]["rules"][0]["on"], "loss_spike");
    assert_eq!(json["alerts"]["rules"][0]["do"]["multiplier"], 0.5);
    // A config without one sends none.
    let plain = keel_trainer::load_config(std::path::Path::new("proxy-tiny")).unwrap();
    assert!(plain.to_json().get("alerts").is_none());
}

#[test]
fn a_resume_after_an_anneal_a_mix_change_and_a_rewind_is_bit_identical() {
    use keel_protocol::{Command, DecayShape};
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = support::tiny();
    cfg.model.max_seq_len = Some(48);
    let mut t = support::trainer(cfg, dir.path());
    losses(&mut t, 6);
    t.checkpoint().unwrap();
    losses(&mut t, 4);
    let mix = |pairs: &[(&str, f64)]| pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    t.apply(&Command::Rewind {
        to_step: Some(6),
        before_step: None,
        skip_batches: 3,
    })
    .unwrap();
    losses(&mut t, 2);
    t.apply(&Command::SetDataMix {
        weights: mix(&[("code", 2.0), ("math", 1.0)]),
    })
    .unwrap();
    losses(&mut t, 2);
    t.apply(&Command::Anneal {
        steps: 20,
        shape: DecayShape::OneMinusSqrt,
        final_lr: 0.0,
        data_mix: Some(mix(&[("prose", 1.0), ("math", 1.0)])),
        seq_len: Some(48),
        rope_theta: Some(490_000.0),
    })
    .unwrap();
    losses(&mut t, 3);
    let saved = t.checkpoint().unwrap();
    let record = |t: &mut Trainer| -> Vec<(u64, u64, f64, f64)> {
        (0..8)
            .map(|_| {
                let r = t.step().unwrap();
                (
                    r.step,
                    r.tokens.unwrap(),
                    r.scalars["loss"].get(),
                    r.scalars["lr"].get(),
                )
            })
            .collect()
    };
    let want = record(&mut t);

    let mut resumed = Trainer::resume(&saved, &Device::Cpu, None).unwrap();
    assert_eq!((resumed.state.step, resumed.state.branch), (13, 1));
    let got = record(&mut resumed);
    // Exactly: the same bits, not merely close.
    assert_eq!(got, want);
    assert_eq!(resumed.state.seq_len, 48);
}

#[test]
fn a_resume_refuses_a_changed_data_file_unless_told_to_allow_it() {
    use keel_trainer::trainer::DataCheck;
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("corpus.txt");
    std::fs::write(&text, "the quick brown fox ".repeat(20)).unwrap();
    let mut cfg = support::tiny();
    cfg.data = keel_trainer::config::DataConfig {
        sources: vec![keel_trainer::config::SourceConfig {
            name: "web".into(),
            kind: keel_trainer::config::SourceKind::Text,
            weight: 1.0,
            path: Some(text.display().to_string()),
        }],
        ..Default::default()
    };
    let ckpts = dir.path().join("ckpt");
    let mut t = support::trainer(cfg, &ckpts);
    losses(&mut t, 2);
    let saved = t.checkpoint().unwrap();
    assert!(Trainer::resume(&saved, &Device::Cpu, None).is_ok());

    std::fs::write(&text, "jumps over the lazy dog ".repeat(20)).unwrap();
    let why = format!(
        "{:#}",
        Trainer::resume(&saved, &Device::Cpu, None).err().unwrap()
    );
    assert!(
        why.contains("corpus.txt: content changed") && why.contains("--allow-data-change"),
        "{why}"
    );
    let mut allowed =
        Trainer::resume_with(&saved, &Device::Cpu, None, DataCheck::AllowChange).unwrap();
    losses(&mut allowed, 1);
    // The next checkpoint records the new content, so resuming from it is not refused.
    let again = allowed.checkpoint().unwrap();
    assert!(Trainer::resume(&again, &Device::Cpu, None).is_ok());

    // A checkpoint of a keel that recorded no hashes resumes (nothing to compare against),
    // and records them from then on.
    let state = again.join("state.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("data_files");
    std::fs::write(&state, serde_json::to_vec(&json).unwrap()).unwrap();
    std::fs::write(&text, "something else entirely ".repeat(20)).unwrap();
    let old = Trainer::resume(&again, &Device::Cpu, None).unwrap();
    assert_eq!(old.state.data_files.len(), 1);
}

#[test]
fn validation_loss_comes_every_eval_every_steps_from_held_out_data_of_each_source() {
    // A file source whose last quarter is all `Z`: with eval.holdout 0.25 exactly that tail is
    // held out (75 `a`, 23 `Z`, then the "\n\n" every document ends with: 100 tokens).
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("web.txt");
    std::fs::write(&text, format!("{}{}", "a".repeat(75), "Z".repeat(23))).unwrap();
    let mut cfg = support::tiny();
    cfg.data.sources.push(keel_trainer::config::SourceConfig {
        name: "web".into(),
        kind: keel_trainer::config::SourceKind::Text,
        weight: 1.0,
        path: Some(text.display().to_string()),
    });
    cfg.eval.every = 3;
    cfg.eval.holdout = 0.25;
    let mix = DataMix::with_holdout(&cfg.data, 1, 0.25).unwrap();
    let web = mix.names().iter().position(|n| n == "web").unwrap();
    let z = u32::from(b'Z');
    for index in 0..50 {
        let b = mix.batch(index, 8, 16).unwrap();
        for (row, s) in b.sources.iter().enumerate() {
            if *s == web {
                let r = &b.inputs[row * 16..(row + 1) * 16];
                assert!(!r.contains(&z), "a training row reached the held-out tail");
            }
        }
    }
    let val = mix.val_batch(web, 0, 4, 16).unwrap().unwrap();
    assert!(val.inputs.iter().all(|t| *t == z || *t == u32::from(b'\n')));
    assert!(val.sources.iter().all(|s| *s == web));

    let mut t = support::trainer(cfg, dir.path());
    let recs: Vec<_> = (0..6).map(|_| t.step().unwrap()).collect();
    let has_val: Vec<bool> = recs
        .iter()
        .map(|r| r.scalars.contains_key("val/loss"))
        .collect();
    assert_eq!(has_val, [false, false, true, false, false, true]);
    let r = &recs[2];
    let sources = ["code", "math", "prose", "web"];
    let per: Vec<f64> = sources
        .iter()
        .map(|s| r.scalars[&format!("val/loss/{s}")].get())
        .collect();
    assert!(per.iter().all(|v| v.is_finite() && *v > 0.0), "{per:?}");
    let mean = per.iter().sum::<f64>() / 4.0;
    assert!((r.scalars["val/loss"].get() - mean).abs() < 1e-12);
    // The same held-out rows every time: an evaluation without a step in between repeats.
    assert_eq!(t.evaluate().unwrap(), t.evaluate().unwrap());
}

#[test]
fn micro_batches_give_the_update_of_the_whole_batch() {
    let run = |k: usize| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = support::tiny();
        cfg.run.micro_batches = k;
        let mut t = support::trainer_f64(cfg, dir.path());
        (0..5)
            .map(|_| {
                let r = t.step().unwrap();
                (r.scalars["loss"].get(), r.scalars["grad_norm"].get())
            })
            .collect::<Vec<_>>()
    };
    let whole = run(1);
    for k in [2, 4] {
        for ((l1, g1), (lk, gk)) in whole.iter().zip(run(k)) {
            assert!((l1 - lk).abs() < 1e-9 * l1, "k={k}: loss {l1} vs {lk}");
            assert!((g1 - gk).abs() < 1e-9 * g1, "k={k}: grad norm {g1} vs {gk}");
        }
    }
    let mut cfg = support::tiny();
    cfg.run.micro_batches = 3;
    let why = cfg.validate().unwrap_err().to_string();
    assert!(why.contains("must divide run.batch_size (4)"), "{why}");
}

#[test]
fn clipping_with_the_factor_on_the_device_trains_as_clipping_on_the_host() {
    let run = |on_device: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = support::tiny();
        cfg.optim.grad_clip = 0.3;
        let mut t = support::trainer(cfg, dir.path());
        t.clip_on_device = on_device;
        (0..8)
            .map(|_| {
                let r = t.step().unwrap();
                (r.scalars["loss"].get(), r.scalars["grad_clipped"].get())
            })
            .collect::<Vec<_>>()
    };
    let (host, device) = (run(false), run(true));
    assert!(
        host.iter().any(|(_, c)| *c == 1.0),
        "the clip bites: {host:?}"
    );
    for ((lh, ch), (ld, cd)) in host.iter().zip(&device) {
        assert_eq!(ch, cd);
        assert!((lh - ld).abs() < 1e-4 * lh, "{lh} vs {ld}");
    }
}

#[test]
fn bf16_computes_over_f32_master_weights_and_follows_the_f32_losses() {
    let run = |dtype: keel_trainer::config::Precision| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = support::tiny();
        cfg.run.dtype = dtype;
        let mut t = support::trainer(cfg, dir.path());
        let recs: Vec<_> = (0..20).map(|_| t.step().unwrap()).collect();
        for p in &t.params.entries {
            assert_eq!(
                p.var.dtype(),
                candle_core::DType::F32,
                "{} is a master weight",
                p.name
            );
        }
        for (name, m) in t.opt.state_tensors() {
            assert_eq!(m.dtype(), candle_core::DType::F32, "{name}");
        }
        recs
    };
    let f32s = run(keel_trainer::config::Precision::F32);
    let bf16s = run(keel_trainer::config::Precision::Bf16);
    for (a, b) in f32s.iter().zip(&bf16s) {
        let (la, lb) = (a.scalars["loss"].get(), b.scalars["loss"].get());
        assert!(
            (la - lb).abs() < 0.03 * la,
            "step {}: f32 {la}, bf16 {lb}",
            a.step
        );
        for (stat, values) in &b.layers {
            assert!(values.iter().all(|v| v.get().is_finite()), "{stat}");
        }
    }
    // The loss falls in bf16 as in f32.
    assert!(bf16s[19].scalars["loss"].get() < bf16s[0].scalars["loss"].get() - 1.0);
}

#[test]
fn the_streaming_attention_trains_as_the_batched_one() {
    let run = |attention| {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = support::tiny();
        cfg.model.n_kv_heads = Some(1);
        let mut t = support::trainer_f64(cfg, dir.path());
        t.model.set_attention(attention);
        (0..4)
            .map(|_| {
                let r = t.step().unwrap();
                let top = r.layers["attn_logit_max"][0].get();
                (r.scalars["loss"].get(), r.scalars["grad_norm"].get(), top)
            })
            .collect::<Vec<_>>()
    };
    use keel_trainer::ops::Attention;
    let (batched, streaming) = (run(Attention::Batched), run(Attention::Streaming));
    for (a, b) in batched.iter().zip(&streaming) {
        assert!((a.0 - b.0).abs() < 1e-9 * a.0, "loss {a:?} {b:?}");
        assert!((a.1 - b.1).abs() < 1e-9 * a.1, "grad norm {a:?} {b:?}");
        assert!(
            (a.2 - b.2).abs() < 1e-9 * a.2.abs().max(1.0),
            "logit tap {a:?} {b:?}"
        );
    }
}
