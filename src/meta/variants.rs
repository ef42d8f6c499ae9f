//! Meta's payloads in other shapes. Graph versions add, drop and retype
//! fields, and real traffic carries what no fixture shows; a parser that
//! panics on one such body holds up everything behind it. Here a JSON
//! document's values are named (JSON pointers) and changed one at a time:
//! replaced by a value of another kind, or removed.
//!
//! The tests run every webhook fixture and every Graph answer through
//! these changes; `switchboard simulate --odd` sends a share of its
//! webhooks changed so, to see a running server take them in its stride.

use serde_json::{json, Value};

/// Values of every JSON kind and of the edges parsers trip on: null,
/// booleans, numbers past `i64` and `f64`'s everyday range, empty and
/// numeric strings, U+0000, text outside ASCII (and a right-to-left
/// override), empty containers and a list holding null. `None` stands for
/// "removed".
pub fn odd_values() -> Vec<Option<Value>> {
    vec![
        Some(Value::Null),
        Some(json!(true)),
        Some(json!(-1)),
        Some(json!(0)),
        Some(json!(1e300)),
        Some(json!(u64::MAX)),
        Some(json!(i64::MIN)),
        Some(json!("")),
        Some(json!("-1")),
        Some(json!("99999999999999999999999")),
        Some(json!("x\u{0}y")),
        Some(json!("🙂 ü 中 \u{202e}")),
        Some(json!([])),
        Some(json!([null])),
        Some(json!({})),
        None,
    ]
}

/// Every value's JSON pointer in `doc`, parents before children (the
/// document itself, `""`, is not among them).
pub fn pointers(doc: &Value) -> Vec<String> {
    fn walk(v: &Value, at: &str, out: &mut Vec<String>) {
        let children: Vec<(String, &Value)> = match v {
            Value::Object(m) => m.iter().map(|(k, v)| (k.replace('~', "~0").replace('/', "~1"), v)).collect(),
            Value::Array(a) => a.iter().enumerate().map(|(i, v)| (i.to_string(), v)).collect(),
            _ => Vec::new(),
        };
        for (key, child) in children {
            let here = format!("{at}/{key}");
            out.push(here.clone());
            walk(child, &here, out);
        }
    }
    let mut out = Vec::new();
    walk(doc, "", &mut out);
    out
}

/// `doc` with the value at `at` replaced by `with`, or removed when `with`
/// is `None` (from its object, or from its list, the items after it moving
/// up). `doc` unchanged when nothing is at `at`.
pub fn changed(doc: &Value, at: &str, with: Option<&Value>) -> Value {
    let mut out = doc.clone();
    match with {
        Some(value) => {
            if let Some(slot) = out.pointer_mut(at) {
                *slot = value.clone();
            }
        }
        None => {
            if let Some((parent, last)) = at.rsplit_once('/') {
                match out.pointer_mut(parent) {
                    Some(Value::Object(m)) => {
                        m.remove(&last.replace("~1", "/").replace("~0", "~"));
                    }
                    Some(Value::Array(a)) => {
                        if let Some(i) = last.parse::<usize>().ok().filter(|i| *i < a.len()) {
                            a.remove(i);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

/// What [`changed`] did, for a message: `"/a/0/b: null"`, `"/a: removed"`.
pub fn describe(at: &str, with: Option<&Value>) -> String {
    match with {
        Some(v) => {
            let text = v.to_string();
            let short: String = text.chars().take(40).collect();
            format!("{at}: {short}")
        }
        None => format!("{at}: removed"),
    }
}

/// Every variant of `doc` with one value changed: each pointer with each
/// of `values` (`odd_values`), with what was done.
pub fn every_variant(doc: &Value, values: &[Option<Value>]) -> Vec<(String, Value)> {
    pointers(doc)
        .iter()
        .flat_map(|at| values.iter().map(move |with| (describe(at, with.as_ref()), changed(doc, at, with.as_ref()))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_named_replaced_and_removed_one_at_a_time() {
        let doc = json!({"a": [1, {"b/c": 2, "d~e": 3}], "f": null});
        assert_eq!(pointers(&doc), ["/a", "/a/0", "/a/1", "/a/1/b~1c", "/a/1/d~0e", "/f"]);
        assert_eq!(changed(&doc, "/a/1/b~1c", Some(&json!("x"))), json!({"a": [1, {"b/c": "x", "d~e": 3}], "f": null}));
        assert_eq!(changed(&doc, "/a/1/d~0e", None), json!({"a": [1, {"b/c": 2}], "f": null}));
        assert_eq!(changed(&doc, "/a/0", None), json!({"a": [{"b/c": 2, "d~e": 3}], "f": null}));
        assert_eq!(changed(&doc, "/f", None), json!({"a": [1, {"b/c": 2, "d~e": 3}]}));
        assert_eq!(changed(&doc, "/nowhere/x", None), doc);
        assert_eq!(changed(&doc, "/a/7", None), doc);
        assert_eq!(changed(&doc, "/nowhere", Some(&json!(1))), doc);
        let all = every_variant(&doc, &odd_values());
        assert_eq!(all.len(), 6 * 16);
        // Each variant changes something, but null put where null was.
        let unchanged: Vec<&str> = all.iter().filter(|(_, v)| v == &doc).map(|(what, _)| what.as_str()).collect();
        assert_eq!(unchanged, ["/f: null"]);
        assert_eq!(describe("/a", None), "/a: removed");
        assert_eq!(describe("/a", Some(&json!("x".repeat(100)))).len(), "/a: ".len() + 40);
    }
}
