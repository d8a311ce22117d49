//! From TensorBoard tags to keel's series. A tag naming one layer of a per-layer statistic
//! (`layers/3/hidden_var`) becomes that layer's value of a layer statistic (`hidden_var`);
//! `tokens` becomes the record's `tokens` field, `time` the scalar `time_s` (both names are
//! taken by the record's own fields); every other tag is a scalar of its own name, unless
//! `--skip-tags` leaves it out or keel cannot take the name. Tags only: what a value does at
//! its step is [`super::steps`]'s.

use std::collections::HashMap;

use regex::Regex;

/// The most layers a keel run may have.
const MAX_LAYERS: u64 = 4096;
/// Series names, as the server takes them: 1 to 128 characters, no control characters, no
/// leading or trailing whitespace.
const MAX_NAME: usize = 128;

/// What a tag's values become.
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    Scalar(String),
    Tokens,
    Layer {
        stat: String,
        index: u32,
    },
    /// Matched by `--skip-tags`.
    Skipped,
    /// Not importable, and why.
    Refused(String),
}

/// `--skip-tags`: a regular expression matched against whole tags.
pub fn whole_tags(s: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{s})$")).map_err(|e| e.to_string())
}

/// `--layer-pattern`: [`whole_tags`] with the named groups `layer` and `stat`.
pub fn layer_pattern(s: &str) -> Result<Regex, String> {
    let re = whole_tags(s)?;
    let names: Vec<&str> = re.capture_names().flatten().collect();
    if !names.contains(&"layer") || !names.contains(&"stat") {
        return Err("the pattern needs the named groups `(?P<layer>…)` and `(?P<stat>…)`".into());
    }
    Ok(re)
}

/// Tags' keys, each worked out once.
pub struct Folding {
    pattern: Option<Regex>,
    skip: Option<Regex>,
    keys: HashMap<String, Key>,
}

impl Folding {
    /// With `pattern`, layer statistics are the tags it matches; without, those of
    /// [`default_layer`]. Tags that `skip` matches are skipped.
    pub fn new(pattern: Option<Regex>, skip: Option<Regex>) -> Self {
        Folding {
            pattern,
            skip,
            keys: HashMap::new(),
        }
    }

    pub fn key(&mut self, tag: &str) -> &Key {
        if !self.keys.contains_key(tag) {
            let key = match &self.skip {
                Some(skip) if skip.is_match(tag) => Key::Skipped,
                _ => classify(self.pattern.as_ref(), tag),
            };
            self.keys.insert(tag.to_owned(), key);
        }
        &self.keys[tag]
    }
}

fn classify(pattern: Option<&Regex>, tag: &str) -> Key {
    let layer = match pattern {
        Some(re) => re
            .captures(tag)
            .map(|c| (c["layer"].to_owned(), c["stat"].to_owned())),
        None => default_layer(tag),
    };
    let Some((index, stat)) = layer else {
        return match tag {
            "tokens" => Key::Tokens,
            "time" => Key::Scalar("time_s".into()),
            _ if valid_name(tag) => Key::Scalar(tag.into()),
            _ => Key::Refused(bad_name(tag)),
        };
    };
    match index.parse::<u64>() {
        Ok(i) if i < MAX_LAYERS && valid_name(&stat) => Key::Layer {
            stat,
            index: i as u32,
        },
        Ok(i) if i < MAX_LAYERS => Key::Refused(bad_name(&stat)),
        Ok(_) => Key::Refused(format!(
            "the layer of `{tag}` is beyond keel's {MAX_LAYERS} layers; left out"
        )),
        Err(_) => Key::Refused(format!(
            "the layer of `{tag}`, `{index}`, is not a layer number; left out"
        )),
    }
}

/// The default rule for per-layer tags: one path segment `layer_<i>`, `block.<i>` or
/// `blocks.<i>`, or the two segments `layers/<i>`, anywhere in the tag. The statistic is the
/// tag with that part removed and the slashes collapsed, and must have a segment left:
/// `layers/3/hidden_var` and `layer_3/hidden_var` are `hidden_var` of layer 3,
/// `train/layer_3/act` is `train/act`, `grad_norm/block.3/attn` is `grad_norm/attn`.
fn default_layer(tag: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = tag.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let one = ["layer_", "block.", "blocks."]
            .iter()
            .find_map(|p| part.strip_prefix(p).and_then(number));
        let (index, width) = match (one, *part, parts.get(i + 1)) {
            (Some(n), _, _) => (n, 1),
            (None, "layers", Some(next)) if number(next).is_some() => (*next, 2),
            _ => continue,
        };
        let rest: Vec<&str> = parts[..i]
            .iter()
            .chain(&parts[i + width..])
            .copied()
            .filter(|p| !p.is_empty())
            .collect();
        return (!rest.is_empty()).then(|| (index.to_owned(), rest.join("/")));
    }
    None
}

/// `s` when it is a decimal number.
fn number(s: &str) -> Option<&str> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then_some(s)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().count() <= MAX_NAME
        && !name.chars().any(char::is_control)
        && name.trim() == name
}

fn bad_name(name: &str) -> String {
    format!(
        "{name:?} is not a keel series name (1 to {MAX_NAME} characters, without control \
         characters or surrounding spaces); left out"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(tag: &str) -> Option<(u32, String)> {
        match classify(None, tag) {
            Key::Layer { stat, index } => Some((index, stat)),
            _ => None,
        }
    }

    #[test]
    fn per_layer_tags_fold_into_a_statistic_named_without_the_layer_part() {
        let cases = [
            ("layers/3/hidden_var", Some((3, "hidden_var"))),
            ("layer_0/grad_norm", Some((0, "grad_norm"))),
            ("train/layer_12/act_absmax", Some((12, "train/act_absmax"))),
            ("grad_norm/block.3/attn", Some((3, "grad_norm/attn"))),
            (
                "stats/blocks.07/update_ratio",
                Some((7, "stats/update_ratio")),
            ),
            ("model/layers/2/mlp/out", Some((2, "model/mlp/out"))),
            ("a//layer_1/b", Some((1, "a/b"))),
            // No statistic left, or no layer number: scalars.
            ("layer_3", None),
            ("layers/3", None),
            ("layers/x/hidden_var", None),
            ("layer_norm/gain", None),
            ("blocks/3/attn", None),
        ];
        for (tag, want) in cases {
            assert_eq!(layer(tag), want.map(|(i, s)| (i, s.to_string())), "{tag}");
        }
        assert_eq!(
            classify(None, "layer_norm/gain"),
            Key::Scalar("layer_norm/gain".into())
        );
        assert!(matches!(classify(None, "layer_5000/x"), Key::Refused(_)));
    }

    #[test]
    fn tokens_and_time_and_bad_names_are_mapped_or_refused() {
        assert_eq!(classify(None, "tokens"), Key::Tokens);
        assert_eq!(classify(None, "time"), Key::Scalar("time_s".into()));
        assert_eq!(classify(None, "loss/code"), Key::Scalar("loss/code".into()));
        for bad in ["", " loss", "loss\n", &"x".repeat(129)] {
            assert!(matches!(classify(None, bad), Key::Refused(_)), "{bad:?}");
        }
        assert_eq!(
            classify(None, &"é".repeat(128)),
            Key::Scalar("é".repeat(128))
        );
    }

    #[test]
    fn a_layer_pattern_replaces_the_default_rules_and_needs_both_groups() {
        let re = layer_pattern(r"(?P<stat>[a-z_]+)\.L(?P<layer>\d+)").unwrap();
        let key = classify(Some(&re), "hidden_var.L7");
        assert_eq!(
            key,
            Key::Layer {
                stat: "hidden_var".into(),
                index: 7
            }
        );
        // Whole tags only, and the default rules are off.
        assert_eq!(
            classify(Some(&re), "x/hidden_var.L7"),
            Key::Scalar("x/hidden_var.L7".into())
        );
        assert_eq!(
            classify(Some(&re), "layers/1/x"),
            Key::Scalar("layers/1/x".into())
        );
        assert!(layer_pattern(r"(?P<layer>\d+)").is_err());
        assert!(layer_pattern(r"(?P<stat>").is_err());
    }

    #[test]
    fn skipped_tags_are_matched_whole_before_any_other_rule() {
        let skip = whole_tags(".* vs (samples|tokens)").unwrap();
        let mut folding = Folding::new(None, Some(skip));
        assert_eq!(folding.key("lm loss vs samples"), &Key::Skipped);
        assert_eq!(folding.key("layers/0/x vs tokens"), &Key::Skipped);
        assert_eq!(folding.key("lm loss"), &Key::Scalar("lm loss".into()));
        assert_eq!(
            folding.key("lm loss vs samples2"),
            &Key::Scalar("lm loss vs samples2".into())
        );
    }
}
