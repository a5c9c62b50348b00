//! Payload filters: a subscription may carry a filter on the event's `data`, and only
//! the events it matches are delivered to it.
//!
//! A filter is JSON. A leaf is a predicate on one field of `data`; `all` and `any`
//! combine filters:
//!
//! ```json
//! {"all": [{"field": "amount", "op": "gte", "value": 10000},
//!          {"field": "currency", "op": "in", "value": ["EUR", "USD"]}]}
//! ```
//!
//! [`Filter::parse`] validates a filter (errors name the offending field, rooted at
//! `filter`, e.g. `filter.all[1].op`), [`Filter::matches`] evaluates it against an
//! event's `data`, and [`Filter::to_json`] gives the JSON back. The semantics of each
//! operator are described on [`Op`]; `docs/filters.md` is the user-facing reference.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Number, Value};

use crate::event::FieldError;

/// Most levels of nesting: the top-level node is level 1.
pub const MAX_DEPTH: usize = 8;
/// Most nodes (`all`, `any` and predicates together) in one filter.
pub const MAX_NODES: usize = 64;
/// Most items in the value of an `in` predicate.
pub const MAX_IN_ITEMS: usize = 256;

/// Field path of the whole filter in error messages.
const ROOT: &str = "filter";
/// The keys a node may have.
const NODE_KEYS: [&str; 5] = ["all", "any", "field", "op", "value"];
/// What a node looks like, for error messages.
const NODE_SHAPE: &str = r#"expected {"all": [...]}, {"any": [...]} or {"field", "op", "value"}"#;

/// A payload filter: a predicate on an event's `data`, or a combination of filters.
///
/// Build one with [`Filter::parse`] (or deserialize it), which enforces the limits
/// ([`MAX_DEPTH`], [`MAX_NODES`], [`MAX_IN_ITEMS`]) and the value each operator needs.
/// [`Filter::matches`] is total: it never fails, also on a filter built by hand.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// True when every filter is true; `all: []` is true.
    All(Vec<Filter>),
    /// True when at least one filter is true. An empty list would always be false and
    /// is rejected by [`Filter::parse`].
    Any(Vec<Filter>),
    /// A predicate on one field of `data`.
    Predicate {
        /// Where the field sits in `data`.
        field: FieldPath,
        /// What the field is tested for.
        test: Test,
    },
}

/// A dotted path into `data`, e.g. `customer.address.country`, split into its segments
/// once, when the filter is parsed. On an object a segment is a key; on an array a
/// segment of digits is an index (`lines.0.amount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    key: String,
    index: Option<usize>,
}

impl FieldPath {
    /// The path of `text`; `None` when a segment is empty.
    pub fn parse(text: &str) -> Option<Self> {
        let segments = text
            .split('.')
            .map(|key| {
                (!key.is_empty()).then(|| Segment {
                    key: key.to_owned(),
                    index: key
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                        .then(|| key.parse().ok())
                        .flatten(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at this path in `data`, `None` when the path leads nowhere.
    fn lookup<'a>(&self, data: &'a Value) -> Option<&'a Value> {
        self.segments
            .iter()
            .try_fold(data, |current, segment| match current {
                Value::Object(map) => map.get(&segment.key),
                Value::Array(items) => segment.index.and_then(|i| items.get(i)),
                _ => None,
            })
    }
}

/// A scalar that orders: the operand of `gt`, `gte`, `lt` and `lte`.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    /// A number (compared numerically and exactly).
    Number(Number),
    /// A string (compared by Unicode code point).
    Text(String),
}

impl Scalar {
    fn to_json(&self) -> Value {
        match self {
            Scalar::Number(n) => Value::Number(n.clone()),
            Scalar::Text(t) => Value::String(t.clone()),
        }
    }
}

/// What a predicate tests its field for: the operator with an operand of the type it
/// needs, so an ill-typed predicate cannot be built.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// `eq`: the field equals the value.
    Eq(Value),
    /// `ne`: the negation of `eq`.
    Ne(Value),
    /// `gt`, `gte`, `lt` or `lte` against a number or a string.
    Compare(Op, Scalar),
    /// `in`: the field equals one of the items.
    In(Vec<Value>),
    /// `exists`: whether the field is present and not `null`.
    Exists(bool),
}

impl Test {
    /// Its operator.
    pub fn op(&self) -> Op {
        match self {
            Test::Eq(_) => Op::Eq,
            Test::Ne(_) => Op::Ne,
            Test::Compare(op, _) => *op,
            Test::In(_) => Op::In,
            Test::Exists(_) => Op::Exists,
        }
    }

    /// Its operand as JSON, as a filter writes it.
    fn operand(&self) -> Value {
        match self {
            Test::Eq(value) | Test::Ne(value) => value.clone(),
            Test::Compare(_, scalar) => scalar.to_json(),
            Test::In(items) => Value::Array(items.clone()),
            Test::Exists(flag) => Value::Bool(*flag),
        }
    }

    /// Applies the test to the field's value (`None`: missing).
    fn holds(&self, field: Option<&Value>) -> bool {
        match (self, field) {
            (Test::Ne(value), _) => !Test::Eq(value.clone()).holds(field),
            (Test::Exists(flag), _) => *flag == field.is_some_and(|v| !v.is_null()),
            (_, None) => false,
            (Test::Eq(value), Some(field)) => values_equal(field, value),
            (Test::In(items), Some(field)) => items.iter().any(|item| values_equal(field, item)),
            (Test::Compare(op, scalar), Some(field)) => {
                let order = match (field, scalar) {
                    (Value::Number(x), Scalar::Number(y)) => compare_numbers(x, y),
                    (Value::String(x), Scalar::Text(y)) => Some(x.as_str().cmp(y)),
                    _ => None,
                };
                order.is_some_and(|order| match op {
                    Op::Gt => order.is_gt(),
                    Op::Gte => order.is_ge(),
                    Op::Lt => order.is_lt(),
                    Op::Lte => order.is_le(),
                    _ => false,
                })
            }
        }
    }
}

/// A predicate's operator.
///
/// Common rules: numbers compare numerically (`10000` equals `10000.0`), also inside
/// arrays and objects compared with `eq`, `ne` and `in`; strings compare by Unicode code
/// point for `gt`/`gte`/`lt`/`lte` (so RFC 3339 UTC timestamps written in the same
/// format compare chronologically); a comparison between values of different types is
/// false. A field is *missing* when its path does not lead to a value; a missing field
/// makes every operator false except `ne` and `exists: false`, which are true. A field
/// holding `null` is present (it equals `null`), except for `exists`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// The field equals the value.
    Eq,
    /// The field does not equal the value: exactly the negation of `eq`, hence true
    /// when the field is missing or of another type than the value.
    Ne,
    /// The field is greater than the value (both numbers or both strings).
    Gt,
    /// The field is greater than or equal to the value (both numbers or both strings).
    Gte,
    /// The field is less than the value (both numbers or both strings).
    Lt,
    /// The field is less than or equal to the value (both numbers or both strings).
    Lte,
    /// The value is an array and the field equals one of its items.
    In,
    /// The value is a boolean: `true` holds when the field is present and not `null`,
    /// `false` when it is missing or `null`.
    Exists,
}

impl Op {
    /// Every operator, in the order error messages list them.
    pub const ALL: [Op; 8] = [
        Op::Eq,
        Op::Ne,
        Op::Gt,
        Op::Gte,
        Op::Lt,
        Op::Lte,
        Op::In,
        Op::Exists,
    ];

    /// The operator's name in a filter (`eq`, `gte`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Ne => "ne",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::In => "in",
            Op::Exists => "exists",
        }
    }

    /// The operator named `name`, if any (names are lower case).
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == name)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Filter {
    /// Parses and validates a filter. The error names the first offending field, its
    /// path rooted at `filter` (e.g. `filter.all[1].op`).
    pub fn parse(value: &Value) -> Result<Filter, FieldError> {
        Parser { nodes: 0 }.node(value, ROOT, 1)
    }

    /// Whether an event with this `data` passes the filter.
    pub fn matches(&self, data: &Value) -> bool {
        match self {
            Filter::All(filters) => filters.iter().all(|f| f.matches(data)),
            Filter::Any(filters) => filters.iter().any(|f| f.matches(data)),
            Filter::Predicate { field, test } => test.holds(field.lookup(data)),
        }
    }

    /// The filter as JSON, in the form [`Filter::parse`] reads.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        match self {
            Filter::All(filters) => {
                object.insert("all".into(), filters.iter().map(Filter::to_json).collect());
            }
            Filter::Any(filters) => {
                object.insert("any".into(), filters.iter().map(Filter::to_json).collect());
            }
            Filter::Predicate { field, test } => {
                object.insert("field".into(), Value::String(field.as_str().into()));
                object.insert("op".into(), Value::String(test.op().as_str().into()));
                object.insert("value".into(), test.operand());
            }
        }
        Value::Object(object)
    }
}

impl Serialize for Filter {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Filter {
    /// Deserializes through [`Filter::parse`]; a validation error becomes a custom
    /// error `"{field}: {message}"`.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Filter::parse(&value)
            .map_err(|e| serde::de::Error::custom(format!("{}: {}", e.field, e.message)))
    }
}

/// Parsing state: the number of nodes seen so far.
struct Parser {
    nodes: usize,
}

impl Parser {
    /// Parses the node `value` found at `path`, `depth` levels deep (the root is 1).
    fn node(&mut self, value: &Value, path: &str, depth: usize) -> Result<Filter, FieldError> {
        if depth > MAX_DEPTH {
            return Err(FieldError::new(
                path,
                format!("filters nest at most {MAX_DEPTH} levels deep"),
            ));
        }
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(FieldError::new(
                ROOT,
                format!("a filter holds at most {MAX_NODES} nodes (all, any and predicates)"),
            ));
        }
        let Value::Object(object) = value else {
            return Err(FieldError::new(
                path,
                format!("must be a JSON object; {NODE_SHAPE}"),
            ));
        };
        if object.is_empty() {
            return Err(FieldError::new(path, format!("is empty; {NODE_SHAPE}")));
        }
        if let Some(key) = object.keys().find(|k| !NODE_KEYS.contains(&k.as_str())) {
            return Err(FieldError::new(
                format!("{path}.{key}"),
                format!("unknown key; {NODE_SHAPE}"),
            ));
        }
        for combinator in ["all", "any"] {
            let Some(items) = object.get(combinator) else {
                continue;
            };
            if object.len() > 1 {
                let others: Vec<String> = object
                    .keys()
                    .filter(|k| k.as_str() != combinator)
                    .map(|k| format!("\"{k}\""))
                    .collect();
                return Err(FieldError::new(
                    path,
                    format!(
                        "\"{combinator}\" cannot be combined with {}",
                        others.join(", ")
                    ),
                ));
            }
            let items_path = format!("{path}.{combinator}");
            let Value::Array(items) = items else {
                return Err(FieldError::new(items_path, "must be an array of filters"));
            };
            if combinator == "any" && items.is_empty() {
                return Err(FieldError::new(items_path, "must hold at least one filter"));
            }
            let filters = items
                .iter()
                .enumerate()
                .map(|(i, item)| self.node(item, &format!("{items_path}[{i}]"), depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(if combinator == "all" {
                Filter::All(filters)
            } else {
                Filter::Any(filters)
            });
        }
        predicate(object, path)
    }
}

/// Parses a leaf `{"field", "op", "value"}` (its keys are known to be among these).
fn predicate(object: &Map<String, Value>, path: &str) -> Result<Filter, FieldError> {
    let field_path = format!("{path}.field");
    let field = match object.get("field") {
        None => return Err(FieldError::new(field_path, "is required")),
        Some(Value::String(field)) => field,
        Some(_) => return Err(FieldError::new(field_path, "must be a string")),
    };
    if field.is_empty() {
        return Err(FieldError::new(field_path, "must not be empty"));
    }
    let Some(field) = FieldPath::parse(field) else {
        return Err(FieldError::new(
            field_path,
            format!("has an empty segment: {}", Value::from(field.as_str())),
        ));
    };

    let op_path = format!("{path}.op");
    let op = match object.get("op") {
        None => return Err(FieldError::new(op_path, "is required")),
        Some(Value::String(name)) => Op::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = Op::ALL.iter().map(|op| op.as_str()).collect();
            FieldError::new(
                &op_path,
                format!("unknown operator \"{name}\" ({})", names.join(", ")),
            )
        })?,
        Some(_) => return Err(FieldError::new(op_path, "must be a string")),
    };

    let value_path = format!("{path}.value");
    let Some(value) = object.get("value") else {
        return Err(FieldError::new(value_path, "is required"));
    };
    let test = match op {
        Op::Eq => Test::Eq(value.clone()),
        Op::Ne => Test::Ne(value.clone()),
        Op::Gt | Op::Gte | Op::Lt | Op::Lte => match value {
            Value::Number(n) => Test::Compare(op, Scalar::Number(n.clone())),
            Value::String(t) => Test::Compare(op, Scalar::Text(t.clone())),
            _ => {
                return Err(FieldError::new(
                    value_path,
                    format!("must be a number or a string for \"{op}\""),
                ))
            }
        },
        Op::In => match value {
            Value::Array(items) if items.len() > MAX_IN_ITEMS => {
                return Err(FieldError::new(
                    value_path,
                    format!("must hold at most {MAX_IN_ITEMS} items"),
                ));
            }
            Value::Array(items) => Test::In(items.clone()),
            _ => return Err(FieldError::new(value_path, "must be an array for \"in\"")),
        },
        Op::Exists => match value {
            Value::Bool(flag) => Test::Exists(*flag),
            _ => {
                return Err(FieldError::new(
                    value_path,
                    "must be true or false for \"exists\"",
                ))
            }
        },
    };
    Ok(Filter::Predicate { field, test })
}

/// JSON equality, except that numbers are equal when their values are (`1 == 1.0`).
fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => compare_numbers(x, y) == Some(Ordering::Equal),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| values_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(key, p)| y.get(key).is_some_and(|q| values_equal(p, q)))
        }
        _ => a == b,
    }
}

/// Orders two JSON numbers by value, exactly (no rounding of large integers).
fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    match (integer(a), integer(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        (Some(x), None) => compare_integer_float(x, b.as_f64()?),
        (None, Some(y)) => compare_integer_float(y, a.as_f64()?).map(Ordering::reverse),
        (None, None) => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// The number as an integer, when it is one (`1.0` is a float here).
fn integer(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// Orders an integer and a float exactly.
fn compare_integer_float(i: i128, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    // Rounding to f64 is monotonic, so a strict order of the rounded integer holds for
    // the integer itself. When they are equal, `f` is integral (an exactly converted
    // integer, or at least 2^53 in magnitude) and within i128, so compare as integers.
    match (i as f64).partial_cmp(&f)? {
        Ordering::Equal => Some(i.cmp(&(f as i128))),
        order => Some(order),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Filter {
        Filter::parse(&value).unwrap_or_else(|e| panic!("{value}: {e}"))
    }

    fn leaf(field: &str, op: &str, value: Value) -> Filter {
        parse(json!({"field": field, "op": op, "value": value}))
    }

    fn check(field: &str, op: &str, value: Value, data: &Value) -> bool {
        leaf(field, op, value).matches(data)
    }

    fn error(value: Value) -> FieldError {
        match Filter::parse(&value) {
            Ok(filter) => panic!("{value} parsed as {filter:?}"),
            Err(e) => e,
        }
    }

    fn large_payment() -> Value {
        json!({"all": [{"field": "amount", "op": "gte", "value": 10000},
                       {"field": "currency", "op": "in", "value": ["EUR", "USD"]}]})
    }

    #[test]
    fn the_large_payment_example() {
        let filter = parse(large_payment());
        assert_eq!(
            filter,
            Filter::All(vec![
                Filter::Predicate {
                    field: FieldPath::parse("amount").unwrap(),
                    test: Test::Compare(Op::Gte, Scalar::Number(10000.into())),
                },
                Filter::Predicate {
                    field: FieldPath::parse("currency").unwrap(),
                    test: Test::In(vec![json!("EUR"), json!("USD")]),
                },
            ])
        );
        assert!(filter.matches(&json!({"amount": 10000, "currency": "EUR"})));
        assert!(filter.matches(&json!({"amount": 25000.5, "currency": "USD", "x": 1})));
        assert!(!filter.matches(&json!({"amount": 9999.99, "currency": "EUR"})));
        assert!(!filter.matches(&json!({"amount": 50000, "currency": "GBP"})));
        assert!(!filter.matches(&json!({"amount": "50000", "currency": "EUR"})));
        assert!(!filter.matches(&json!({"currency": "EUR"})));
        assert!(!filter.matches(&json!({})));
        assert!(!filter.matches(&json!(null)));
    }

    #[test]
    fn eq_and_ne() {
        let data = json!({"status": "paid", "n": 3, "ok": true, "none": null,
                          "tags": ["a", "b"], "obj": {"x": 1}});
        assert!(check("status", "eq", json!("paid"), &data));
        assert!(!check("status", "eq", json!("Paid"), &data));
        assert!(check("n", "eq", json!(3), &data));
        assert!(check("ok", "eq", json!(true), &data));
        assert!(check("none", "eq", json!(null), &data));
        assert!(check("tags", "eq", json!(["a", "b"]), &data));
        assert!(!check("tags", "eq", json!(["b", "a"]), &data));
        assert!(check("obj", "eq", json!({"x": 1.0}), &data));
        assert!(!check("obj", "eq", json!({"x": 1, "y": 2}), &data));

        assert!(!check("status", "ne", json!("paid"), &data));
        assert!(check("status", "ne", json!("void"), &data));
        assert!(!check("none", "ne", json!(null), &data));
        assert!(check("n", "ne", json!(4), &data));
    }

    #[test]
    fn ordering_operators_on_numbers() {
        let data = json!({"amount": 500});
        let cases = [
            ("gt", 499, true),
            ("gt", 500, false),
            ("gte", 500, true),
            ("gte", 501, false),
            ("lt", 501, true),
            ("lt", 500, false),
            ("lte", 500, true),
            ("lte", 499, false),
        ];
        for (op, value, expected) in cases {
            assert_eq!(
                check("amount", op, json!(value), &data),
                expected,
                "{op} {value}"
            );
        }
        assert!(check("amount", "gt", json!(499.5), &data));
        assert!(check("amount", "lt", json!(500.01), &data));
        assert!(check("amount", "gte", json!(-1), &data));
        assert!(check("neg", "lt", json!(0), &json!({"neg": -2.5})));
    }

    #[test]
    fn ordering_operators_on_strings_and_timestamps() {
        let data = json!({"name": "beta", "at": "2026-03-01T09:30:00Z"});
        assert!(check("name", "gt", json!("alpha"), &data));
        assert!(check("name", "gte", json!("beta"), &data));
        assert!(check("name", "lt", json!("betb"), &data));
        assert!(check("name", "lte", json!("beta"), &data));
        assert!(
            !check("name", "lt", json!("Beta"), &data),
            "code point order"
        );
        assert!(check("at", "gte", json!("2026-03-01T00:00:00Z"), &data));
        assert!(check("at", "lt", json!("2026-03-01T10:00:00Z"), &data));
        assert!(!check("at", "gt", json!("2026-12-31T23:59:59Z"), &data));
    }

    #[test]
    fn in_operator() {
        let data = json!({"currency": "EUR", "amount": 100, "none": null});
        assert!(check("currency", "in", json!(["USD", "EUR"]), &data));
        assert!(!check("currency", "in", json!(["USD", "GBP"]), &data));
        assert!(!check("currency", "in", json!([]), &data));
        assert!(check("amount", "in", json!([50, 100.0]), &data));
        assert!(!check("amount", "in", json!(["100"]), &data));
        assert!(check("none", "in", json!([null]), &data));
        assert!(!check("missing", "in", json!([null]), &data));
    }

    #[test]
    fn exists_operator() {
        let data = json!({"ref": "abc", "none": null, "zero": 0, "empty": ""});
        for field in ["ref", "zero", "empty"] {
            assert!(check(field, "exists", json!(true), &data), "{field}");
            assert!(!check(field, "exists", json!(false), &data), "{field}");
        }
        for field in ["none", "missing", "ref.deeper"] {
            assert!(!check(field, "exists", json!(true), &data), "{field}");
            assert!(check(field, "exists", json!(false), &data), "{field}");
        }
    }

    #[test]
    fn numbers_compare_numerically_across_int_and_float() {
        let data = json!({"int": 10000, "float": 10000.0, "big": u64::MAX, "neg": -5});
        assert!(check("int", "eq", json!(10000.0), &data));
        assert!(check("float", "eq", json!(10000), &data));
        assert!(!check("float", "ne", json!(10000), &data));
        assert!(check("int", "gte", json!(10000.0), &data));
        assert!(check("float", "lte", json!(10000), &data));
        assert!(check("big", "eq", json!(u64::MAX), &data));
        assert!(check("big", "gt", json!(i64::MAX), &data));
        assert!(check("neg", "lt", json!(u64::MAX), &data));
        assert!(check("neg", "eq", json!(-5.0), &data));

        // Large integers are compared exactly, not through a rounded f64.
        let near = json!({"n": 9_007_199_254_740_993_u64}); // 2^53 + 1
        assert!(!check("n", "eq", json!(9_007_199_254_740_992.0), &near));
        assert!(check("n", "gt", json!(9_007_199_254_740_992.0), &near));
        assert!(check("n", "lt", json!(9_007_199_254_740_994.0), &near));
        assert_eq!(compare_integer_float(3, 2.5), Some(Ordering::Greater));
        assert_eq!(compare_integer_float(-3, -2.5), Some(Ordering::Less));
        assert_eq!(compare_integer_float(1 << 70, 1e300), Some(Ordering::Less));
    }

    #[test]
    fn different_types_never_compare() {
        let data = json!({"s": "100", "n": 100, "b": true, "a": [1], "o": {}, "z": null});
        assert!(!check("s", "eq", json!(100), &data));
        assert!(!check("n", "eq", json!("100"), &data));
        assert!(!check("b", "eq", json!(1), &data));
        assert!(!check("s", "gt", json!(1), &data));
        assert!(!check("s", "lt", json!(1000), &data));
        assert!(!check("n", "gte", json!("1"), &data));
        assert!(!check("n", "lte", json!("999"), &data));
        for field in ["b", "a", "o", "z"] {
            for op in ["gt", "gte", "lt", "lte"] {
                assert!(!check(field, op, json!(0), &data), "{field} {op} 0");
                assert!(!check(field, op, json!(""), &data), "{field} {op} \"\"");
            }
        }
        // `ne` is the negation of `eq`.
        assert!(check("s", "ne", json!(100), &data));
    }

    #[test]
    fn missing_fields() {
        let data = json!({"present": 1, "obj": {"a": 1}, "list": [1]});
        for field in [
            "absent",
            "obj.b",
            "present.x",
            "list.1",
            "list.x",
            "obj.a.b",
        ] {
            assert!(!check(field, "eq", json!(1), &data), "{field}");
            assert!(check(field, "ne", json!(1), &data), "{field}");
            assert!(check(field, "ne", json!(null), &data), "{field}");
            assert!(!check(field, "eq", json!(null), &data), "{field}");
            for op in ["gt", "gte", "lt", "lte"] {
                assert!(!check(field, op, json!(0), &data), "{field} {op}");
            }
            assert!(!check(field, "in", json!([1, null]), &data), "{field}");
            assert!(!check(field, "exists", json!(true), &data), "{field}");
            assert!(check(field, "exists", json!(false), &data), "{field}");
        }
        // Data that is not an object has no fields.
        assert!(!check("a", "exists", json!(true), &json!(5)));
    }

    #[test]
    fn nested_paths_and_array_indexes() {
        let data = json!({
            "customer": {"id": "cus_1", "address": {"country": "DE"}},
            "lines": [{"amount": 10}, {"amount": 250, "tags": ["travel", "hotel"]}],
            "matrix": [[1, 2], [3, 4]],
            "by_year": {"2026": {"total": 7}},
        });
        assert!(check("customer.address.country", "eq", json!("DE"), &data));
        assert!(check("customer.id", "in", json!(["cus_1", "cus_2"]), &data));
        assert!(check("lines.1.amount", "gt", json!(100), &data));
        assert!(check("lines.0.amount", "lt", json!(100), &data));
        assert!(check("lines.1.tags.0", "eq", json!("travel"), &data));
        assert!(check("matrix.1.0", "eq", json!(3), &data));
        assert!(check("lines.01.amount", "eq", json!(250), &data));
        // On an object, a segment of digits is a key.
        assert!(check("by_year.2026.total", "eq", json!(7), &data));
        // Out of range, non-numeric or huge indexes are missing.
        assert!(!check("lines.2.amount", "exists", json!(true), &data));
        assert!(!check("lines.first.amount", "exists", json!(true), &data));
        assert!(!check("lines.-1.amount", "exists", json!(true), &data));
        assert!(!check(
            "lines.99999999999999999999999.amount",
            "exists",
            json!(true),
            &data
        ));
        // Segments of digits do not index objects with other keys, nor strings.
        assert!(!check("customer.0", "exists", json!(true), &data));
        assert!(!check("customer.id.0", "exists", json!(true), &data));
        // The whole sub-object can be compared.
        assert!(check(
            "customer.address",
            "eq",
            json!({"country": "DE"}),
            &data
        ));
    }

    #[test]
    fn all_and_any() {
        let data = json!({"a": 1, "b": 2});
        assert!(parse(json!({"all": []})).matches(&data));
        assert!(!Filter::Any(vec![]).matches(&data));
        let yes = json!({"field": "a", "op": "eq", "value": 1});
        let no = json!({"field": "b", "op": "eq", "value": 1});
        assert!(parse(json!({"all": [yes, yes]})).matches(&data));
        assert!(!parse(json!({"all": [yes, no]})).matches(&data));
        assert!(parse(json!({"any": [no, yes]})).matches(&data));
        assert!(!parse(json!({"any": [no, no]})).matches(&data));
        let nested = parse(json!({"any": [no, {"all": [yes, {"any": [yes]}]}]}));
        assert!(nested.matches(&data));
    }

    #[test]
    fn validation_errors_name_the_field() {
        let ops = "(eq, ne, gt, gte, lt, lte, in, exists)";
        let amount = json!({"field": "amount", "op": "gte", "value": 10000});
        let cases: Vec<(Value, &str, String)> = vec![
            (
                json!({"all": [amount, {"field": "amount", "op": "between", "value": [1, 2]}]}),
                "filter.all[1].op",
                format!("unknown operator \"between\" {ops}"),
            ),
            (
                json!([amount]),
                "filter",
                format!("must be a JSON object; {NODE_SHAPE}"),
            ),
            (
                json!({"all": ["amount"]}),
                "filter.all[0]",
                format!("must be a JSON object; {NODE_SHAPE}"),
            ),
            (json!({}), "filter", format!("is empty; {NODE_SHAPE}")),
            (
                json!({"all": [], "any": [amount]}),
                "filter",
                "\"all\" cannot be combined with \"any\"".into(),
            ),
            (
                json!({"any": [amount], "field": "x", "op": "eq"}),
                "filter",
                "\"any\" cannot be combined with \"field\", \"op\"".into(),
            ),
            (
                json!({"field": "x", "op": "eq", "value": 1, "note": "hi"}),
                "filter.note",
                format!("unknown key; {NODE_SHAPE}"),
            ),
            (
                json!({"any": [{"not": amount}]}),
                "filter.any[0].not",
                format!("unknown key; {NODE_SHAPE}"),
            ),
            (
                json!({"all": amount}),
                "filter.all",
                "must be an array of filters".into(),
            ),
            (
                json!({"any": []}),
                "filter.any",
                "must hold at least one filter".into(),
            ),
            (
                json!({"op": "eq", "value": 1}),
                "filter.field",
                "is required".into(),
            ),
            (
                json!({"field": 3, "op": "eq", "value": 1}),
                "filter.field",
                "must be a string".into(),
            ),
            (
                json!({"field": "", "op": "eq", "value": 1}),
                "filter.field",
                "must not be empty".into(),
            ),
            (
                json!({"all": [{"field": "customer..id", "op": "eq", "value": 1}]}),
                "filter.all[0].field",
                "has an empty segment: \"customer..id\"".into(),
            ),
            (
                json!({"field": ".id", "op": "eq", "value": 1}),
                "filter.field",
                "has an empty segment: \".id\"".into(),
            ),
            (
                json!({"field": "id.", "op": "eq", "value": 1}),
                "filter.field",
                "has an empty segment: \"id.\"".into(),
            ),
            (
                json!({"field": "x", "value": 1}),
                "filter.op",
                "is required".into(),
            ),
            (
                json!({"field": "x", "op": 1, "value": 1}),
                "filter.op",
                "must be a string".into(),
            ),
            (
                json!({"field": "x", "op": "EQ", "value": 1}),
                "filter.op",
                format!("unknown operator \"EQ\" {ops}"),
            ),
            (
                json!({"field": "x", "op": "eq"}),
                "filter.value",
                "is required".into(),
            ),
            (
                json!({"all": [amount, {"any": [{"field": "currency", "op": "in", "value": "EUR"}]}]}),
                "filter.all[1].any[0].value",
                "must be an array for \"in\"".into(),
            ),
            (
                json!({"field": "x", "op": "in", "value": vec![0; MAX_IN_ITEMS + 1]}),
                "filter.value",
                "must hold at most 256 items".into(),
            ),
            (
                json!({"field": "x", "op": "exists", "value": "yes"}),
                "filter.value",
                "must be true or false for \"exists\"".into(),
            ),
            (
                json!({"field": "x", "op": "exists", "value": null}),
                "filter.value",
                "must be true or false for \"exists\"".into(),
            ),
            (
                json!({"field": "x", "op": "gt", "value": true}),
                "filter.value",
                "must be a number or a string for \"gt\"".into(),
            ),
            (
                json!({"field": "x", "op": "gte", "value": null}),
                "filter.value",
                "must be a number or a string for \"gte\"".into(),
            ),
            (
                json!({"field": "x", "op": "lt", "value": [1]}),
                "filter.value",
                "must be a number or a string for \"lt\"".into(),
            ),
            (
                json!({"field": "x", "op": "lte", "value": {}}),
                "filter.value",
                "must be a number or a string for \"lte\"".into(),
            ),
        ];
        for (value, field, message) in cases {
            let err = error(value.clone());
            assert_eq!(err.field, field, "{value}");
            assert_eq!(err.message, message, "{value}");
        }
    }

    /// A chain of `depth` nodes: `depth - 1` nested `all`s around one predicate.
    fn nested(depth: usize) -> Value {
        let mut value = json!({"field": "a", "op": "exists", "value": true});
        for _ in 1..depth {
            value = json!({"all": [value]});
        }
        value
    }

    #[test]
    fn depth_is_limited_to_eight_levels() {
        assert!(parse(nested(MAX_DEPTH)).matches(&json!({"a": 1})));
        let err = error(nested(MAX_DEPTH + 1));
        assert_eq!(
            err.field,
            "filter.all[0].all[0].all[0].all[0].all[0].all[0].all[0].all[0]"
        );
        assert_eq!(err.message, "filters nest at most 8 levels deep");
        // Far deeper input is rejected the same way, at the first level too deep.
        assert_eq!(error(nested(100)).field, err.field);
    }

    #[test]
    fn node_count_is_limited_to_sixty_four() {
        let predicate = json!({"field": "a", "op": "exists", "value": true});
        // The `all` node plus 63 predicates: 64 nodes.
        let fits = json!({"all": vec![predicate.clone(); MAX_NODES - 1]});
        assert!(parse(fits).matches(&json!({"a": 1})));
        let too_many = json!({"all": vec![predicate.clone(); MAX_NODES]});
        let err = error(too_many);
        assert_eq!(err.field, "filter");
        assert_eq!(
            err.message,
            "a filter holds at most 64 nodes (all, any and predicates)"
        );
        // Nodes are counted across levels.
        let spread = json!({"any": [
            {"all": vec![predicate.clone(); 40]},
            {"all": vec![predicate.clone(); 40]},
        ]});
        assert_eq!(error(spread).field, "filter");
    }

    #[test]
    fn round_trip_of_normalized_filters() {
        let filters = [
            large_payment(),
            nested(MAX_DEPTH),
            json!({"all": []}),
            json!({"field": "customer.address.country", "op": "ne", "value": "DE"}),
            json!({"field": "lines.0.amount", "op": "lt", "value": 12.5}),
            json!({"field": "total", "op": "eq", "value": 10000.0}),
            json!({"field": "total", "op": "eq", "value": 10000}),
            json!({"field": "meta", "op": "eq", "value": {"a": [1, null, "x"]}}),
            json!({"field": "note", "op": "eq", "value": null}),
            json!({"any": [
                {"field": "a", "op": "exists", "value": false},
                {"field": "b", "op": "gte", "value": "2026-01-01T00:00:00Z"},
                {"all": [{"field": "c", "op": "in", "value": [1, "1", true]},
                         {"field": "d", "op": "lte", "value": -3}]},
            ]}),
        ];
        for value in filters {
            let filter = parse(value.clone());
            assert_eq!(filter.to_json(), value);
            assert_eq!(Filter::parse(&filter.to_json()).unwrap(), filter);
        }
    }

    #[test]
    fn serde_goes_through_parse_and_to_json() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Record {
            filter: Option<Filter>,
        }
        let record: Record = serde_json::from_value(json!({"filter": large_payment()})).unwrap();
        assert_eq!(record.filter, Some(parse(large_payment())));
        assert_eq!(
            serde_json::to_value(&record).unwrap(),
            json!({"filter": large_payment()})
        );
        let text = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), record);

        let err = serde_json::from_value::<Filter>(
            json!({"all": [{"field": "a", "op": "between", "value": 1}]}),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "filter.all[0].op: unknown operator \"between\" (eq, ne, gt, gte, lt, lte, in, exists)"
        );
    }

    #[test]
    fn operator_names() {
        for op in Op::ALL {
            assert_eq!(Op::from_name(op.as_str()), Some(op));
            assert_eq!(op.to_string(), op.as_str());
        }
        assert_eq!(Op::from_name("between"), None);
    }
}
