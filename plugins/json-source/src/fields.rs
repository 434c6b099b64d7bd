//! Finding the wanted fields of a JSON body in one streaming pass.
//!
//! The column paths become a trie at configure time. Each body is parsed with
//! serde_json's streaming deserializer: object keys are matched against the trie
//! without allocating, the value of each wanted path is captured as its raw text
//! (a span of the body), and everything else is skipped unparsed (`IgnoredAny`).
//! No `serde_json::Value` is ever built.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::config::ColumnSpec;

/// Where a column's value lies in the body: the byte range of its JSON text.
pub(crate) type Span = Option<(usize, usize)>;

/// The trie of wanted paths. Node 0 is the top-level object.
#[derive(Debug)]
pub(crate) struct Fields {
    nodes: Vec<Node>,
}

#[derive(Debug, Default)]
struct Node {
    /// Keys wanted below this node, and their nodes.
    children: Vec<(Box<str>, usize)>,
    /// Columns whose path ends here.
    columns: Vec<usize>,
    /// The first column whose path goes through here (names it in errors).
    first_column: usize,
    /// The path to here, as errors show it.
    path: String,
}

impl Node {
    fn child(&self, key: &str) -> Option<usize> {
        self.children
            .iter()
            .find(|(k, _)| **k == *key)
            .map(|&(_, n)| n)
    }

    /// Looks `key` up among the children, starting at `*next`, and on a match sets
    /// `*next` past it. Producers write their keys in the same order every time, so
    /// when the columns follow that order the first comparison hits.
    #[inline]
    fn child_from(&self, key: &str, next: &mut usize) -> Option<usize> {
        let n = self.children.len();
        for i in 0..n {
            let at = (*next + i) % n;
            let (k, child) = &self.children[at];
            // A byte loop: keys are short, and a call to memcmp (a plain byte loop
            // itself in wasm's compiler-builtins) costs more than the comparison.
            if k.len() == key.len() && k.bytes().zip(key.bytes()).all(|(a, b)| a == b) {
                *next = at + 1;
                return Some(*child);
            }
        }
        None
    }
}

/// Why a body's fields could not be found.
#[derive(Debug)]
pub(crate) enum ExtractError {
    /// The body is not JSON.
    Json(serde_json::Error),
    /// The top level, or an object on a column's path, is another kind of value.
    NotAnObject {
        /// The path to it (empty for the top level).
        path: String,
        /// The first column whose path goes through it.
        column: usize,
        /// What was there instead.
        found: String,
    },
}

impl Fields {
    /// The trie of the columns' paths.
    pub fn new(columns: &[ColumnSpec]) -> Self {
        let mut nodes = vec![Node::default()];
        for (c, column) in columns.iter().enumerate() {
            let mut at = 0;
            for (depth, key) in column.path.iter().enumerate() {
                at = match nodes[at].child(key) {
                    Some(next) => next,
                    None => {
                        let next = nodes.len();
                        let path = crate::config::display_path(&column.path[..=depth]);
                        nodes.push(Node {
                            first_column: c,
                            path,
                            ..Node::default()
                        });
                        nodes[at].children.push((key.as_str().into(), next));
                        next
                    }
                };
            }
            nodes[at].columns.push(c);
        }
        Fields { nodes }
    }

    /// Finds the wanted fields of `body`, setting `spans[c]` to the span of column
    /// `c`'s value (left `None` when absent). On duplicate keys, the last one wins.
    pub fn extract(&self, body: &str, spans: &mut [Span]) -> Result<(), ExtractError> {
        let mut state = State {
            base: body.as_ptr() as usize,
            spans,
            problem: None,
        };
        let mut de = serde_json::Deserializer::from_str(body);
        NodeSeed {
            fields: self,
            node: 0,
            state: &mut state,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(ExtractError::Json)?;
        match state.problem {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }
}

struct State<'s> {
    /// Address of the body's first byte: spans are offsets from it.
    base: usize,
    spans: &'s mut [Span],
    /// The first object on a path that was another kind of value.
    problem: Option<ExtractError>,
}

/// Visits the value at `node`: an object to descend into.
struct NodeSeed<'f, 's, 'b> {
    fields: &'f Fields,
    node: usize,
    state: &'b mut State<'s>,
}

impl NodeSeed<'_, '_, '_> {
    fn not_an_object(self, found: fmt::Arguments<'_>) {
        if self.state.problem.is_none() {
            let node = &self.fields.nodes[self.node];
            self.state.problem = Some(ExtractError::NotAnObject {
                path: node.path.clone(),
                column: node.first_column,
                found: found.to_string(),
            });
        }
    }
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let fields = self.fields;
        let node = &fields.nodes[self.node];
        let mut next = 0;
        while let Some(child) = map.next_key_seed(KeySeed {
            node,
            next: &mut next,
        })? {
            let Some(child) = child else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let wanted = &fields.nodes[child];
            if wanted.columns.is_empty() {
                map.next_value_seed(NodeSeed {
                    fields,
                    node: child,
                    state: &mut *self.state,
                })?;
                continue;
            }
            let raw: &'de RawValue = map.next_value()?;
            let text = raw.get();
            let start = text.as_ptr() as usize - self.state.base;
            for &c in &wanted.columns {
                self.state.spans[c] = Some((start, start + text.len()));
            }
            if !wanted.children.is_empty() {
                // A path that is also the prefix of longer paths: read the captured
                // object again for those (rare, so not worth a fused visitor).
                let mut de = serde_json::Deserializer::from_str(text);
                NodeSeed {
                    fields,
                    node: child,
                    state: &mut *self.state,
                }
                .deserialize(&mut de)
                .map_err(serde::de::Error::custom)?;
            }
        }
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        // A null object on a path: its fields are absent. The top level must be an object.
        if self.node == 0 {
            self.not_an_object(format_args!("null"));
        }
        Ok(())
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.not_an_object(format_args!("boolean {v}"));
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.not_an_object(format_args!("number {v}"));
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.not_an_object(format_args!("number {v}"));
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.not_an_object(format_args!("number {v}"));
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.not_an_object(format_args!("string {}", crate::convert::Quoted(v)));
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.not_an_object(format_args!("array"));
        Ok(())
    }
}

/// Reads an object key and looks it up among a node's children, without allocating
/// (serde_json hands over a borrowed or, for escaped keys, a scratch `&str`).
struct KeySeed<'f, 'n> {
    node: &'f Node,
    /// Where to start looking: after the previous key's match.
    next: &'n mut usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_, '_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Option<usize>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_, '_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    #[inline]
    fn visit_str<E>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.node.child_from(key, self.next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BytesEncoding, TimeUnit};
    use sluice_plugin_sdk::ColumnType;

    fn spec(path: &[&str]) -> ColumnSpec {
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        ColumnSpec {
            name: path.join("_"),
            ty: ColumnType::Json,
            nullable: true,
            path_display: crate::config::display_path(&path),
            path,
            unit: TimeUnit::Seconds,
            encoding: BytesEncoding::Base64,
            coerce: false,
        }
    }

    fn extract<'b>(
        fields: &Fields,
        n: usize,
        body: &'b str,
    ) -> Result<Vec<Option<&'b str>>, ExtractError> {
        let mut spans = vec![None; n];
        fields.extract(body, &mut spans)?;
        Ok(spans
            .into_iter()
            .map(|s| s.map(|(a, b)| &body[a..b]))
            .collect())
    }

    #[test]
    fn finds_nested_and_prefix_paths_and_skips_the_rest() {
        let columns = [
            spec(&["a"]),
            spec(&["b", "c"]),
            spec(&["b"]),
            spec(&["b", "d", "e"]),
            spec(&["x.y"]),
        ];
        let fields = Fields::new(&columns);
        let body = r#" {"z": [1, {"a": 0}], "a" : "A\"", "b": {"c": 1.5e3, "d": {"e": null}, "q": {}}, "x.y": true} "#;
        let got = extract(&fields, 5, body).unwrap();
        assert_eq!(
            got,
            [
                Some(r#""A\"""#),
                Some("1.5e3"),
                Some(r#"{"c": 1.5e3, "d": {"e": null}, "q": {}}"#),
                Some("null"),
                Some("true")
            ]
        );
        // Escaped keys match too; absent paths stay None; the last duplicate wins.
        let got = extract(&fields, 5, r#"{"\u0061": 1, "b": null, "a": 2}"#).unwrap();
        assert_eq!(got, [Some("2"), None, Some("null"), None, None]);
    }

    #[test]
    fn names_what_is_not_an_object() {
        let fields = Fields::new(&[spec(&["call", "id"])]);
        for (body, path, found) in [
            ("[1]", "", "array"),
            ("null", "", "null"),
            ("\"x\"", "", "string \"x\""),
            (r#"{"call": "abc"}"#, "call", "string \"abc\""),
            (r#"{"call": 12}"#, "call", "number 12"),
            (r#"{"call": [true]}"#, "call", "array"),
        ] {
            match extract(&fields, 1, body) {
                Err(ExtractError::NotAnObject {
                    path: p,
                    column,
                    found: f,
                }) => {
                    assert_eq!((p.as_str(), column, f.as_str()), (path, 0, found), "{body}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
        assert!(matches!(
            extract(&fields, 1, r#"{"call": 1"#),
            Err(ExtractError::Json(_))
        ));
        assert!(matches!(
            extract(&fields, 1, r#"{} x"#),
            Err(ExtractError::Json(_))
        ));
    }
}
