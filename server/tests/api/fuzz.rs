//! A property-based fuzzer driven by `/api/openapi.json`: for every operation it makes
//! requests the description allows (path and query parameters within their schemas, bodies
//! generated from their schemas) and requests it forbids (one parameter or field broken:
//! out of range, of the wrong type, not in its enum, unknown, or a required one missing), and
//! checks the server against the description: an allowed request is never refused as
//! malformed (400, 422), a forbidden one is never accepted, every status is one the operation
//! describes, and nothing is a 5xx.
//!
//! What OpenAPI cannot say about parameters, the description says with two extensions the
//! fuzzer honours: `x-one-of` (exactly one of these parameters is required) and `x-ordered`
//! (the first parameter is not above the second).
//!
//! A failure prints the seed (`KEEL_FUZZ_SEED` replays it) and the request.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::helpers::{TOKEN, TestApp, step};

/// A small deterministic generator (xorshift64*), so that a failing case can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

struct Spec<'a> {
    doc: &'a Value,
}

impl Spec<'_> {
    /// `v` with a `$ref` followed (and an `allOf` of one schema, which only adds a
    /// description, opened).
    fn resolve<'b>(&'b self, v: &'b Value) -> &'b Value {
        if let Some([one]) = v.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
            return self.resolve(one);
        }
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let mut at = self.doc;
                for part in r.trim_start_matches("#/").split('/') {
                    at = &at[part];
                }
                self.resolve(at)
            }
            None => v,
        }
    }

    /// A value the schema allows.
    fn valid(&self, schema: &Value, rng: &mut Rng, depth: u32) -> Value {
        let s = self.resolve(schema);
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            return rng.pick(e).clone();
        }
        if let Some(c) = s.get("const") {
            return c.clone();
        }
        // Properties with a `oneOf` of required sets (`lr` or `multiplier`): exactly one set,
        // and none of the others' fields.
        if let (Some(_), Some(alts)) = (
            s.get("properties"),
            s.get("oneOf").and_then(Value::as_array),
        ) && alts.iter().all(|a| {
            a.as_object()
                .is_some_and(|o| o.keys().all(|k| k == "required"))
        }) {
            let chosen = rng.below(alts.len() as u64) as usize;
            let mut one = s.clone();
            one.as_object_mut().unwrap().remove("oneOf");
            let mut required: Vec<Value> = s["required"].as_array().cloned().unwrap_or_default();
            required.extend(
                alts[chosen]["required"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
            for (i, alt) in alts.iter().enumerate() {
                for name in alt["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|_| i != chosen)
                {
                    one["properties"]
                        .as_object_mut()
                        .unwrap()
                        .remove(name.as_str().unwrap());
                }
            }
            one["required"] = Value::Array(required);
            return self.valid(&one, rng, depth);
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(alts) = s.get(key).and_then(Value::as_array) {
                return self.valid(rng.pick(alts), rng, depth);
            }
        }
        if let Some(all) = s.get("allOf").and_then(Value::as_array) {
            let mut out = Map::new();
            for part in all {
                if let Value::Object(o) = self.valid(part, rng, depth) {
                    out.extend(o);
                }
            }
            return Value::Object(out);
        }
        let types: Vec<&str> = match &s["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ if s.get("properties").is_some() => vec!["object"],
            _ => vec!["string"],
        };
        match *rng.pick(&types) {
            "null" => Value::Null,
            "boolean" => json!(rng.chance(0.5)),
            "integer" => {
                let lo = s["minimum"].as_i64().unwrap_or(0);
                let hi = s["maximum"].as_i64().unwrap_or(lo.saturating_add(1000));
                let span = (hi - lo) as u64;
                json!(match rng.below(4) {
                    0 => lo,
                    1 => hi,
                    _ => lo + rng.below(span.saturating_add(1)).min(span) as i64,
                })
            }
            "number" => {
                let lo = s["minimum"]
                    .as_f64()
                    .or(s["exclusiveMinimum"].as_f64().map(|m| m + 1e-3))
                    .unwrap_or(0.0);
                let hi = s["maximum"].as_f64().unwrap_or(lo + 10.0);
                json!(lo + (hi - lo) * rng.below(1000) as f64 / 1000.0)
            }
            "array" => {
                let min = s["minItems"].as_u64().unwrap_or(0);
                let max = s["maxItems"].as_u64().unwrap_or(min + 3).min(min + 3);
                let n = if depth > 3 {
                    min
                } else {
                    min + rng.below(max - min + 1)
                };
                json!(
                    (0..n)
                        .map(|_| self.valid(&s["items"], rng, depth + 1))
                        .collect::<Vec<_>>()
                )
            }
            "object" => {
                let mut out = Map::new();
                let required: Vec<&str> = s["required"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if let Some(props) = s["properties"].as_object() {
                    for (name, p) in props {
                        if required.contains(&name.as_str()) || (depth < 3 && rng.chance(0.5)) {
                            out.insert(name.clone(), self.valid(p, rng, depth + 1));
                        }
                    }
                }
                if let Some(extra) = s.get("additionalProperties").filter(|a| a.is_object()) {
                    let least = s["minProperties"].as_u64().unwrap_or(0);
                    let n = if depth < 3 {
                        least + rng.below(3)
                    } else {
                        least
                    };
                    for i in 0..n {
                        out.insert(format!("k{i}"), self.valid(extra, rng, depth + 1));
                    }
                }
                Value::Object(out)
            }
            _ => {
                if let Some(ex) = s["examples"].as_array().filter(|e| !e.is_empty()) {
                    return rng.pick(ex).clone();
                }
                let min = s["minLength"].as_u64().unwrap_or(1);
                let n = min + rng.below(6);
                json!(
                    (0..n)
                        .map(|_| *rng.pick(&['a', 'b', 'c', 'x', 'y', '7']))
                        .collect::<String>()
                )
            }
        }
    }

    /// A value the schema forbids, when there is one to make.
    fn invalid(&self, schema: &Value, rng: &mut Rng) -> Option<Value> {
        let s = self.resolve(schema);
        let mut options = Vec::new();
        if s.get("enum").is_some() {
            options.push(json!("not-one-of-them"));
        }
        match s["type"].as_str() {
            Some("integer") => {
                options.push(json!("seven"));
                options.push(json!(1.5));
                if let Some(lo) = s["minimum"].as_i64() {
                    options.push(json!(lo - 1));
                }
                if let Some(hi) = s["maximum"].as_i64() {
                    options.push(json!(hi + 1));
                }
            }
            Some("number") => {
                options.push(json!("seven"));
                if let Some(lo) = s["minimum"].as_f64() {
                    options.push(json!(lo - 1.0));
                }
                if let Some(lo) = s["exclusiveMinimum"].as_f64() {
                    options.push(json!(lo));
                }
            }
            Some("boolean") => options.push(json!("maybe")),
            Some("array") => options.push(json!({"not": "a list"})),
            Some("object") => options.push(json!([1, 2])),
            _ => {}
        }
        (!options.is_empty()).then(|| rng.pick(&options).clone())
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What one generated request is meant to be.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Allowed,
    Forbidden,
}

struct Request {
    method: String,
    path: String,
    body: Option<Value>,
    kind: Kind,
    why: String,
}

/// The runs, series and commands the requests' path parameters name.
fn fixtures(app: &TestApp) -> BTreeMap<&'static str, Value> {
    let id = app.create_run("fuzz", 2);
    let steps: Vec<Value> = (0..50).map(|s| step(s, json!(1.0 + s as f64), 2)).collect();
    assert_eq!(app.ingest(id, json!(steps)).status, 200);
    let c = app.post(
        &format!("/api/v1/runs/{id}/commands"),
        &json!({"kind": "pause"}),
    );
    assert_eq!(c.status, 202);
    BTreeMap::from([
        ("id", json!(id)),
        ("cid", c.body["id"].clone()),
        ("key", json!("loss")),
        ("stat", json!("hidden_var")),
    ])
}

fn generate(
    spec: &Spec,
    method: &str,
    path: &str,
    op: &Value,
    fix: &BTreeMap<&str, Value>,
    rng: &mut Rng,
) -> Request {
    let params: Vec<&Value> = op["parameters"]
        .as_array()
        .map(|ps| ps.iter().map(|p| spec.resolve(p)).collect())
        .unwrap_or_default();
    let one_of: Vec<Vec<&str>> = op["x-one-of"]
        .as_array()
        .map(|g| {
            g.iter()
                .map(|names| {
                    names
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(Value::as_str)
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    let ordered: Vec<(&str, &str)> = op["x-ordered"]
        .as_array()
        .map(|g| {
            g.iter()
                .map(|p| (p[0].as_str().unwrap(), p[1].as_str().unwrap()))
                .collect()
        })
        .unwrap_or_default();
    // The values of an allowed request.
    let mut query: BTreeMap<String, Value> = BTreeMap::new();
    let chosen: Vec<&str> = one_of.iter().map(|g| *rng.pick(g)).collect();
    for p in params.iter().filter(|p| p["in"] == "query") {
        let name = p["name"].as_str().unwrap();
        let grouped = one_of.iter().any(|g| g.contains(&name));
        let wanted = if grouped {
            chosen.contains(&name)
        } else {
            p["required"] == true || rng.chance(0.5)
        };
        if wanted {
            let v = match name {
                "runs" => fix["id"].clone(),
                "group" => json!("fuzz-group"),
                "stat" => fix["stat"].clone(),
                "key" => fix["key"].clone(),
                _ => spec.valid(&p["schema"], rng, 0),
            };
            query.insert(name.to_owned(), v);
        }
    }
    for (a, b) in &ordered {
        if let (Some(x), Some(y)) = (
            query.get(*a).and_then(Value::as_i64),
            query.get(*b).and_then(Value::as_i64),
        ) && x > y
        {
            query.insert((*a).to_owned(), json!(y));
            query.insert((*b).to_owned(), json!(x));
        }
    }
    let mut body = op["requestBody"]["content"]["application/json"]["schema"]
        .as_object()
        .map(|_| {
            spec.valid(
                &op["requestBody"]["content"]["application/json"]["schema"],
                rng,
                0,
            )
        });
    let mut kind = Kind::Allowed;
    let mut why = String::from("allowed");
    // Break one thing, half the time.
    if rng.chance(0.5) {
        // An unknown query parameter: refused by operations that take query parameters (those
        // without any ignore a query string, as the description says).
        let mut ways: Vec<u8> = Vec::new();
        if params.iter().any(|p| p["in"] == "query") {
            ways.push(0);
        }
        if !query.is_empty() {
            ways.push(1); // a query value out of its schema
        }
        if params
            .iter()
            .any(|p| p["in"] == "query" && p["required"] == true)
            || !one_of.is_empty()
        {
            ways.push(2); // a required one missing (or both of a one-of)
        }
        if body.is_some() {
            ways.push(3); // a body field broken
        }
        match ways
            .get(rng.below(ways.len() as u64) as usize)
            .copied()
            .unwrap_or(4)
        {
            4 => {}
            0 => {
                query.insert("colour".into(), json!("blue"));
                kind = Kind::Forbidden;
                why = "an unknown parameter".into();
            }
            1 => {
                let names: Vec<String> = query.keys().cloned().collect();
                let name = rng.pick(&names).clone();
                let p = params.iter().find(|p| p["name"] == name.as_str()).unwrap();
                if let Some(bad) = spec.invalid(&p["schema"], rng) {
                    why = format!("`{name}` = {bad}");
                    query.insert(name, bad);
                    kind = Kind::Forbidden;
                }
            }
            2 => {
                if let Some(g) = one_of.first() {
                    if rng.chance(0.5) {
                        for name in g {
                            query.remove(*name);
                        }
                        why = format!("none of {g:?}");
                    } else {
                        for name in g {
                            query.insert(
                                (*name).to_owned(),
                                if *name == "runs" {
                                    fix["id"].clone()
                                } else {
                                    json!("fuzz-group")
                                },
                            );
                        }
                        why = format!("all of {g:?}");
                    }
                    kind = Kind::Forbidden;
                } else if let Some(p) = params
                    .iter()
                    .find(|p| p["in"] == "query" && p["required"] == true)
                {
                    query.remove(p["name"].as_str().unwrap());
                    why = format!("no `{}`", p["name"]);
                    kind = Kind::Forbidden;
                }
            }
            _ => {
                let schema = &op["requestBody"]["content"]["application/json"]["schema"];
                if let Some((w, b)) = break_body(spec, schema, body.take().unwrap(), rng) {
                    why = w;
                    kind = Kind::Forbidden;
                    body = Some(b);
                } else {
                    body = Some(spec.valid(schema, rng, 0));
                }
            }
        }
    }
    let mut url = path.to_owned();
    for p in params.iter().filter(|p| p["in"] == "path") {
        let name = p["name"].as_str().unwrap();
        let v = fix.get(name).cloned().unwrap_or(json!(1));
        url = url.replace(&format!("{{{name}}}"), &text(&v));
    }
    let q: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(&text(v))))
        .collect();
    if !q.is_empty() {
        url = format!("{url}?{}", q.join("&"));
    }
    Request {
        method: method.to_uppercase(),
        path: url,
        body,
        kind,
        why,
    }
}

/// The body with one thing broken: a required field gone, an unknown field added (when
/// unknown fields are refused), or a field's value out of its schema.
fn break_body(spec: &Spec, schema: &Value, body: Value, rng: &mut Rng) -> Option<(String, Value)> {
    let s = spec.resolve(schema);
    if s.get("oneOf").is_some() || s.get("anyOf").is_some() {
        return None;
    }
    let Value::Object(mut obj) = body else {
        return None;
    };
    let required: Vec<String> = s["required"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut ways = Vec::new();
    if !required.is_empty() {
        ways.push(0);
    }
    if s["additionalProperties"] == false {
        ways.push(1);
    }
    let breakable: Vec<String> = obj
        .keys()
        .filter(|k| {
            spec.invalid(&s["properties"][k.as_str()], &mut Rng(1))
                .is_some()
        })
        .cloned()
        .collect();
    if !breakable.is_empty() {
        ways.push(2);
    }
    if ways.is_empty() {
        return None;
    }
    Some(match *rng.pick(&ways) {
        0 => {
            let name = rng.pick(&required).clone();
            obj.remove(&name);
            (format!("no `{name}` in the body"), Value::Object(obj))
        }
        1 => {
            obj.insert("colour".into(), json!("blue"));
            ("an unknown field in the body".into(), Value::Object(obj))
        }
        _ => {
            let name = rng.pick(&breakable).clone();
            let bad = spec.invalid(&s["properties"][name.as_str()], rng).unwrap();
            let why = format!("body `{name}` = {bad}");
            obj.insert(name, bad);
            (why, Value::Object(obj))
        }
    })
}

fn send(app: &TestApp, r: &Request) -> (u16, String) {
    let url = app.url(&r.path);
    let auth = format!("Bearer {TOKEN}");
    let resp = match (r.method.as_str(), &r.body) {
        ("GET", _) => app.agent.get(&url).header("Authorization", &auth).call(),
        ("DELETE", _) => app.agent.delete(&url).header("Authorization", &auth).call(),
        ("PUT", b) => app
            .agent
            .put(&url)
            .header("Authorization", &auth)
            .send_json(b.clone().unwrap_or(json!({}))),
        (_, Some(b)) => app
            .agent
            .post(&url)
            .header("Authorization", &auth)
            .send_json(b),
        (_, None) => app
            .agent
            .post(&url)
            .header("Authorization", &auth)
            .send_empty(),
    };
    let mut resp = resp.unwrap();
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap_or_default();
    (status, text.chars().take(300).collect())
}

#[test]
fn no_request_contradicts_the_openapi_description() {
    let seed: u64 = std::env::var("KEEL_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe);
    let rounds: usize = std::env::var("KEEL_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let app = TestApp::spawn();
    let doc = app.get("/api/openapi.json").body;
    let spec = Spec { doc: &doc };
    let fix = fixtures(&app);
    let mut rng = Rng(seed);
    // By contradiction and operation: how many, and the first example.
    let mut failures: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut tried = 0;
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let streams = op["responses"]["200"]["content"]
                .get("text/event-stream")
                .is_some();
            // Streams never end, and launching and the long poll's waiting are tested elsewhere.
            if streams || path.ends_with("/cancel") || path.ends_with("/commands/pending") {
                continue;
            }
            let described: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            // Refusals the description names that depend on stored data, not on the request's
            // shape (`x-refused-when`: status → what the answer says).
            let content_refusal = |status: u16, answer: &str| {
                op["x-refused-when"][status.to_string()]
                    .as_str()
                    .is_some_and(|phrase| answer.contains(phrase))
            };
            for _ in 0..rounds {
                let r = generate(&spec, method, path, op, &fix, &mut rng);
                let (status, answer) = send(&app, &r);
                tried += 1;
                *kinds
                    .entry(format!("{:?} → {}xx", r.kind, status / 100))
                    .or_insert(0) += 1;
                let code = status.to_string();
                let wrong = if status >= 500 {
                    Some("a 5xx")
                } else if !described.contains(&&code) {
                    Some("a status the operation does not describe")
                } else if r.kind == Kind::Allowed
                    && (status == 400 || status == 422)
                    && !content_refusal(status, &answer)
                {
                    Some("an allowed request refused")
                } else if r.kind == Kind::Forbidden && status < 400 {
                    Some("a forbidden request accepted")
                } else {
                    None
                };
                if let Some(wrong) = wrong {
                    let example = format!(
                        "{} {} ({}) body {} → {status} {answer}",
                        r.method,
                        r.path,
                        r.why,
                        r.body.as_ref().map_or("-".into(), |b| b.to_string())
                    );
                    let entry = failures
                        .entry(format!("{wrong}: {} {path}", method.to_uppercase()))
                        .or_insert((0, example));
                    entry.0 += 1;
                }
            }
        }
    }
    eprintln!("{tried} requests: {kinds:?}");
    assert!(tried > 500, "{tried} requests");
    let report: Vec<String> = failures
        .iter()
        .map(|(what, (n, example))| format!("{what} ({n}×), e.g. {example}"))
        .collect();
    assert!(
        failures.is_empty(),
        "seed {seed}: requests that contradict the description:\n{}",
        report.join("\n")
    );
}
