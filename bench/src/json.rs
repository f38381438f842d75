//! Just enough JSON to write `latest.json`: a value tree with insertion-ordered objects and a
//! pretty printer. (The workspace has no serde; the benchmark only ever writes JSON.)

use std::fmt::Write;

#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn obj() -> Json {
        Json::Obj(Vec::new())
    }

    /// Sets `key` in an object (replacing an earlier value of the same key) and returns self,
    /// for building objects in one expression.
    pub fn with(mut self, key: &str, value: impl Into<Json>) -> Json {
        self.set(key, value);
        self
    }

    /// Sets `key` in an object, replacing an earlier value. Panics on a non-object: a bug.
    pub fn set(&mut self, key: &str, value: impl Into<Json>) {
        let Json::Obj(fields) = self else {
            panic!("Json::set on a non-object");
        };
        let value = value.into();
        match fields.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => fields.push((key.to_string(), value)),
        }
    }

    /// The object under `key`, created empty if missing.
    pub fn entry(&mut self, key: &str) -> &mut Json {
        let Json::Obj(fields) = self else {
            panic!("Json::entry on a non-object");
        };
        let at = match fields.iter().position(|(k, _)| k == key) {
            Some(at) => at,
            None => {
                fields.push((key.to_string(), Json::obj()));
                fields.len() - 1
            }
        };
        &mut fields[at].1
    }

    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn pretty(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out.push('\n');
        out
    }

    fn write(&self, out: &mut String, indent: usize) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) => write_num(out, *n),
            Json::Str(s) => write_str(out, s),
            Json::Arr(items) => {
                // Arrays of numbers stay on one line (the runs of a cell).
                if items.iter().all(|i| matches!(i, Json::Num(_))) {
                    out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push_str(", ");
                        }
                        item.write(out, indent);
                    }
                    out.push(']');
                    return;
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    out.push_str(if i > 0 { ",\n" } else { "\n" });
                    pad(out, indent + 1);
                    item.write(out, indent + 1);
                }
                if !items.is_empty() {
                    out.push('\n');
                    pad(out, indent);
                }
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    out.push_str(if i > 0 { ",\n" } else { "\n" });
                    pad(out, indent + 1);
                    write_str(out, k);
                    out.push_str(": ");
                    v.write(out, indent + 1);
                }
                if !fields.is_empty() {
                    out.push('\n');
                    pad(out, indent);
                }
                out.push('}');
            }
        }
    }
}

fn pad(out: &mut String, indent: usize) {
    for _ in 0..indent {
        out.push_str("  ");
    }
}

/// Finite numbers as JSON numbers (integers without a fraction, others rounded to 6
/// significant digits); NaN and infinities have no JSON form and become null.
fn write_num(out: &mut String, n: f64) {
    if !n.is_finite() {
        out.push_str("null");
    } else if n == n.trunc() && n.abs() < 1e15 {
        let _ = write!(out, "{}", n as i64);
    } else {
        let digits = 6 - 1 - n.abs().log10().floor().clamp(-12.0, 5.0) as i32;
        let s = format!("{:.*}", digits.max(0) as usize, n);
        let s = if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        };
        out.push_str(&s);
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl From<bool> for Json {
    fn from(b: bool) -> Json {
        Json::Bool(b)
    }
}

impl From<f64> for Json {
    fn from(n: f64) -> Json {
        Json::Num(n)
    }
}

impl From<u64> for Json {
    fn from(n: u64) -> Json {
        Json::Num(n as f64)
    }
}

impl From<usize> for Json {
    fn from(n: usize) -> Json {
        Json::Num(n as f64)
    }
}

impl From<&str> for Json {
    fn from(s: &str) -> Json {
        Json::Str(s.to_string())
    }
}

impl From<String> for Json {
    fn from(s: String) -> Json {
        Json::Str(s)
    }
}

impl<T: Into<Json>> From<Vec<T>> for Json {
    fn from(items: Vec<T>) -> Json {
        Json::Arr(items.into_iter().map(Into::into).collect())
    }
}

impl<T: Into<Json>> From<Option<T>> for Json {
    fn from(v: Option<T>) -> Json {
        v.map_or(Json::Null, Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_nested_values() {
        let j = Json::obj()
            .with("a", 1.0)
            .with("b", "x\"y\n")
            .with("c", vec![1.5, 2.0])
            .with("d", Json::obj().with("e", true).with("f", Json::Null))
            .with("g", Json::Arr(vec![]));
        assert_eq!(
            j.pretty(),
            "{\n  \"a\": 1,\n  \"b\": \"x\\\"y\\n\",\n  \"c\": [1.5, 2],\n  \"d\": {\n    \"e\": true,\n    \"f\": null\n  },\n  \"g\": []\n}\n"
        );
    }

    #[test]
    fn numbers() {
        let s = |n: f64| {
            let mut o = String::new();
            write_num(&mut o, n);
            o
        };
        assert_eq!(s(0.0), "0");
        assert_eq!(s(12345.678), "12345.7");
        assert_eq!(s(18.6655137), "18.6655");
        assert_eq!(s(0.00123456789), "0.00123457");
        assert_eq!(s(-2.5), "-2.5");
        assert_eq!(s(f64::NAN), "null");
    }

    #[test]
    fn set_replaces_and_entry_creates() {
        let mut j = Json::obj().with("a", 1.0);
        j.set("a", 2.0);
        j.entry("b").set("c", "d");
        assert_eq!(j.get("a"), Some(&Json::Num(2.0)));
        assert_eq!(j.get("b").and_then(|b| b.get("c")), Some(&Json::from("d")));
    }
}
