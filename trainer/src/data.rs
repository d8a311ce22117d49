//! Training data: named sources mixed by weight, tokenised, and cut into batches.
//!
//! A batch is a pure function of (seed, batch index, weights, batch size, sequence length), so
//! a resumed run sees exactly the batches it would have seen, and a rewind that skips K batches
//! only has to move the index. Sources are text files or globs, JSON lines with a `text` field,
//! or one of the built-in generators (in [`crate::generators`]), which need no download.
//! Tokens are bytes unless a HuggingFace `tokenizer.json` is configured.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use crate::config::{DataConfig, SourceConfig, SourceKind};
use crate::generators;
use crate::rng::Rng;

/// Text → token ids.
pub enum Tokenizer {
    /// One token per UTF-8 byte: vocabulary 256.
    Bytes,
    Hf(Box<tokenizers::Tokenizer>),
}

impl Tokenizer {
    pub fn load(path: Option<&str>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Self::Bytes);
        };
        let t = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow::anyhow!("loading tokenizer {path}: {e}"))?;
        Ok(Self::Hf(Box::new(t)))
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Bytes => 256,
            Self::Hf(t) => t.get_vocab_size(true),
        }
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Self::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Self::Hf(t) => Ok(t
                .encode(text, false)
                .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?
                .get_ids()
                .to_vec()),
        }
    }
}

/// Where one source's tokens come from.
enum Origin {
    Generator(SourceKind),
    /// Every document of the source, tokenised and joined; tokens from `train` on are held
    /// out for validation.
    Corpus {
        tokens: Vec<u32>,
        train: usize,
    },
}

/// One batch: `inputs` and `targets` are `[batch, seq_len]` row-major; `sources[r]` is the
/// index of the source row `r` came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub inputs: Vec<u32>,
    pub targets: Vec<u32>,
    pub sources: Vec<usize>,
    pub batch_size: usize,
    pub seq_len: usize,
}

pub struct DataMix {
    names: Vec<String>,
    /// Every data file read, by path, with the SHA-256 of its bytes.
    files: BTreeMap<String, String>,
    origins: Vec<Origin>,
    weights: Vec<f64>,
    tokenizer: Tokenizer,
    seed: u64,
    corrupt: Option<crate::config::Corrupt>,
}

impl DataMix {
    pub fn new(cfg: &DataConfig, seed: u64) -> Result<Self> {
        Self::with_holdout(cfg, seed, 0.0)
    }

    /// A mix whose file sources keep the last `holdout` share of their tokens for validation.
    pub fn with_holdout(cfg: &DataConfig, seed: u64, holdout: f64) -> Result<Self> {
        let tokenizer = Tokenizer::load(cfg.tokenizer.as_deref())?;
        let mut files = BTreeMap::new();
        if let Some(path) = &cfg.tokenizer {
            files.insert(path.clone(), sha256_hex(&read_bytes(Path::new(path))?));
        }
        let origins = cfg
            .sources
            .iter()
            .map(|s| origin(s, &tokenizer, &mut files, holdout))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            names: cfg.sources.iter().map(|s| s.name.clone()).collect(),
            files,
            origins,
            weights: cfg.sources.iter().map(|s| s.weight).collect(),
            tokenizer,
            seed,
            corrupt: cfg.corrupt.clone(),
        })
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The files this mix was read from (data and tokenizer), each with the SHA-256 of its
    /// content: a checkpoint keeps them, so a resume can tell that its data changed.
    pub fn files(&self) -> &BTreeMap<String, String> {
        &self.files
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }

    pub fn weights(&self) -> BTreeMap<String, f64> {
        self.names
            .iter()
            .cloned()
            .zip(self.weights.iter().copied())
            .collect()
    }

    /// Replace the mix. Sources not named get weight 0; an unknown name is an error whose
    /// text is meant for the operator.
    pub fn set_weights(&mut self, weights: &BTreeMap<String, f64>) -> Result<(), String> {
        let mut next = vec![0.0; self.names.len()];
        for (name, w) in weights {
            let Some(i) = self.names.iter().position(|n| n == name) else {
                return Err(format!(
                    "unknown data source `{name}`; this run has: {}",
                    self.names.join(", ")
                ));
            };
            if !(w.is_finite() && *w >= 0.0) {
                return Err(format!("the weight of `{name}` must be ≥ 0, got {w}"));
            }
            next[i] = *w;
        }
        if !next.iter().any(|w| *w > 0.0) {
            return Err("at least one source needs a positive weight".into());
        }
        self.weights = next;
        Ok(())
    }

    /// The batch with this index: a pure function of the seed, the index and the mix.
    pub fn batch(&self, index: u64, batch_size: usize, seq_len: usize) -> Result<Batch> {
        let mut rng = Rng::indexed(self.seed, "batch", index);
        let mut b = Batch {
            inputs: Vec::with_capacity(batch_size * seq_len),
            targets: Vec::with_capacity(batch_size * seq_len),
            sources: Vec::with_capacity(batch_size),
            batch_size,
            seq_len,
        };
        let garbage = self
            .corrupt
            .as_ref()
            .is_some_and(|c| (c.from_batch..c.from_batch + c.batches).contains(&index));
        for i in 0..batch_size {
            let s = self.source_of(index * batch_size as u64 + i as u64);
            let row = if garbage {
                let vocab = self.tokenizer.vocab_size() as u64;
                (0..=seq_len)
                    .map(|_| rng.below(vocab as usize) as u32)
                    .collect()
            } else {
                self.row(s, &mut Rng::new(rng.next_u64()), seq_len + 1)?
            };
            b.inputs.extend_from_slice(&row[..seq_len]);
            b.targets.extend_from_slice(&row[1..]);
            b.sources.push(s);
        }
        Ok(b)
    }

    /// Held-out batch `index` of source `s`, every row from that source: the tail of a file
    /// source, a stream of its own for a generated one. `None` for a file source with nothing
    /// held out.
    pub fn val_batch(
        &self,
        s: usize,
        index: u64,
        batch_size: usize,
        seq_len: usize,
    ) -> Result<Option<Batch>> {
        let mut rng = Rng::indexed(self.seed, "val", index * self.names.len() as u64 + s as u64);
        let mut b = Batch {
            inputs: Vec::with_capacity(batch_size * seq_len),
            targets: Vec::with_capacity(batch_size * seq_len),
            sources: vec![s; batch_size],
            batch_size,
            seq_len,
        };
        for _ in 0..batch_size {
            let row = match &self.origins[s] {
                Origin::Corpus { tokens, train } => {
                    let held = &tokens[*train..];
                    if held.is_empty() {
                        return Ok(None);
                    }
                    window(held, rng.below(held.len()), seq_len + 1)
                }
                Origin::Generator(_) => self.row(s, &mut Rng::new(rng.next_u64()), seq_len + 1)?,
            };
            b.inputs.extend_from_slice(&row[..seq_len]);
            b.targets.extend_from_slice(&row[1..]);
        }
        Ok(Some(b))
    }

    /// The source of the `n`th row of the run: the mix's shares laid along [0, 1) and the rows
    /// on the golden-ratio sequence through it, which fills any stretch of it evenly. So every
    /// batch holds the sources in the mix's proportions, give or take a row, as a blending
    /// loader does: a batch's loss does not swing with how many rows of a hard source it
    /// happened to draw.
    fn source_of(&self, n: u64) -> usize {
        const GOLDEN: f64 = 0.618_033_988_749_894_9;
        let start = Rng::indexed(self.seed, "mix", 0).uniform();
        let u = (start + n as f64 * GOLDEN).fract();
        crate::rng::pick(&self.weights, u)
    }

    /// `len` consecutive tokens of source `s`.
    fn row(&self, s: usize, rng: &mut Rng, len: usize) -> Result<Vec<u32>> {
        match &self.origins[s] {
            Origin::Corpus { tokens, train } => {
                let part = &tokens[..*train];
                Ok(window(part, rng.below(part.len()), len))
            }
            Origin::Generator(kind) => {
                // Start somewhere inside the first document, so rows are not all aligned.
                let skip = rng.below(32);
                let mut tokens = Vec::with_capacity(len + skip + 64);
                while tokens.len() < len + skip {
                    tokens.extend(self.tokenizer.encode(&generators::document(*kind, rng))?);
                }
                Ok(tokens[skip..skip + len].to_vec())
            }
        }
    }
}

/// `len` tokens from `start`, wrapping around the end of the corpus.
fn window(tokens: &[u32], start: usize, len: usize) -> Vec<u32> {
    tokens
        .iter()
        .cycle()
        .skip(start)
        .take(len)
        .copied()
        .collect()
}

fn origin(
    s: &SourceConfig,
    tok: &Tokenizer,
    files: &mut BTreeMap<String, String>,
    holdout: f64,
) -> Result<Origin> {
    let documents = match s.kind {
        SourceKind::Arithmetic | SourceKind::Code | SourceKind::Prose => {
            return Ok(Origin::Generator(s.kind));
        }
        SourceKind::Text => read_files(s, files, |text| Ok(vec![text]))?,
        SourceKind::Jsonl => read_files(s, files, jsonl_texts)?,
    };
    let mut tokens = Vec::new();
    for doc in documents {
        tokens.extend(tok.encode(&doc)?);
        tokens.extend(tok.encode("\n\n")?);
    }
    ensure!(tokens.len() > 1, "data source `{}` has no text", s.name);
    // The end of the corpus is held out, whole: training windows never reach into it.
    let held = ((tokens.len() as f64 * holdout).ceil() as usize).min(tokens.len() / 2);
    let train = tokens.len() - held;
    Ok(Origin::Corpus { tokens, train })
}

/// The documents of every file matched by the source's path (a file or a glob), in name order.
fn read_files(
    s: &SourceConfig,
    hashes: &mut BTreeMap<String, String>,
    split: impl Fn(String) -> Result<Vec<String>>,
) -> Result<Vec<String>> {
    let pattern = s.path.as_deref().context("source without a path")?;
    let mut files: Vec<_> = glob::glob(pattern)
        .with_context(|| format!("bad glob {pattern}"))?
        .filter_map(Result::ok)
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("data source `{}`: no file matches {pattern}", s.name);
    }
    let mut docs = Vec::new();
    for f in files {
        let bytes = read_bytes(&f)?;
        hashes.insert(f.display().to_string(), sha256_hex(&bytes));
        let text = String::from_utf8(bytes)
            .with_context(|| format!("{} is not UTF-8 text", f.display()))?;
        docs.extend(split(text)?);
    }
    Ok(docs)
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How the data files of a checkpoint differ from the files read now: one line per file that
/// changed, disappeared or appeared. Empty when they are the same.
pub fn file_changes(
    then: &BTreeMap<String, String>,
    now: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (path, hash) in then {
        match now.get(path) {
            None => out.push(format!("{path}: no longer read")),
            Some(h) if h != hash => out.push(format!("{path}: content changed")),
            Some(_) => {}
        }
    }
    for path in now.keys().filter(|p| !then.contains_key(*p)) {
        out.push(format!("{path}: new"));
    }
    out
}

/// The `text` field of every non-empty line.
fn jsonl_texts(content: String) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in content
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("line {}: not JSON", i + 1))?;
        let text = v.get("text").and_then(|t| t.as_str());
        out.push(
            text.with_context(|| format!("line {}: no `text` string", i + 1))?
                .to_string(),
        );
    }
    Ok(out)
}
