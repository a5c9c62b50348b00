//! The event catalog: known event types, each with a JSON Schema of its `data`. The
//! built-in finance types (`catalog/builtin.json`: payments, invoices and corrections,
//! dunning, expenses, card transactions with FX details, transfers, customers and
//! suppliers with bank details, contracts, orders) plus an operator's own, from a file
//! of the same shape. Validators are compiled once, when the catalog is made; checking
//! an event is then one walk of its `data`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{Event, FieldError};

/// The built-in types, as shipped.
const BUILTIN: &str = include_str!("../catalog/builtin.json");

/// A catalog file: `{"types": [{"type", "description"?, "schema"}]}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    /// The types it defines.
    pub types: Vec<EventTypeEntry>,
}

/// One event type as a catalog file writes it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTypeEntry {
    /// Its name, e.g. `invoice.paid`.
    #[serde(rename = "type")]
    pub name: String,
    /// What it means.
    #[serde(default)]
    pub description: String,
    /// The JSON Schema (2020-12 unless it says otherwise) its `data` must satisfy.
    pub schema: Value,
}

/// Where a type comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Shipped with Hookline.
    Builtin,
    /// The operator's catalog file (which may replace a built-in type).
    File,
}

/// A known event type, as `GET /v1/event-types` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct EventType {
    /// Its name.
    #[serde(rename = "type")]
    pub name: String,
    /// What it means.
    pub description: String,
    /// Built in or the operator's.
    pub source: Source,
    /// The JSON Schema of its `data`.
    pub schema: Value,
}

/// What to do with events of a type the catalog does not know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnknownTypes {
    /// Accept them unchecked.
    #[default]
    Allow,
    /// Refuse them (`422` naming `type`).
    Refuse,
}

impl std::str::FromStr for UnknownTypes {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "allow" => Ok(Self::Allow),
            "refuse" => Ok(Self::Refuse),
            other => Err(format!("{other:?}: expected allow or refuse")),
        }
    }
}

/// The known types with their compiled validators.
pub struct Catalog {
    types: BTreeMap<String, (EventType, jsonschema::Validator)>,
    unknown: UnknownTypes,
    validate: bool,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("types", &self.types.keys().collect::<Vec<_>>())
            .field("unknown", &self.unknown)
            .field("validate", &self.validate)
            .finish()
    }
}

impl Catalog {
    /// The built-in types, then `file`'s (the operator's JSON, replacing built-in types
    /// of the same name), compiled; an error names the type whose schema is invalid.
    /// `validate: false` keeps the list but checks no `data`.
    pub fn new(file: Option<&str>, unknown: UnknownTypes, validate: bool) -> Result<Self, String> {
        let builtin: CatalogFile =
            serde_json::from_str(BUILTIN).map_err(|e| format!("built-in catalog: {e}"))?;
        let mut entries: Vec<(EventTypeEntry, Source)> = builtin
            .types
            .into_iter()
            .map(|t| (t, Source::Builtin))
            .collect();
        if let Some(text) = file {
            let own: CatalogFile =
                serde_json::from_str(text).map_err(|e| format!("catalog file: {e}"))?;
            entries.extend(own.types.into_iter().map(|t| (t, Source::File)));
        }
        let mut types = BTreeMap::new();
        for (entry, source) in entries {
            crate::event::validate_name(&entry.name)
                .map_err(|e| format!("event type {:?}: {e}", entry.name))?;
            if entry.name.contains('*') {
                return Err(format!("event type {:?}: no `*` in a type", entry.name));
            }
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&entry.schema)
                .map_err(|e| format!("event type {}: invalid schema: {e}", entry.name))?;
            let shown = EventType {
                name: entry.name.clone(),
                description: entry.description,
                source,
                schema: entry.schema,
            };
            types.insert(entry.name, (shown, validator));
        }
        Ok(Self {
            types,
            unknown,
            validate,
        })
    }

    /// Every known type, by name.
    pub fn types(&self) -> impl Iterator<Item = &EventType> {
        self.types.values().map(|(shown, _)| shown)
    }

    /// The type `name`, if known.
    pub fn get(&self, name: &str) -> Option<&EventType> {
        self.types.get(name).map(|(shown, _)| shown)
    }

    /// Checks `event` against its type: `Ok` when its `data` satisfies the schema (or
    /// the type is unknown and allowed); else the first violation, its field the path
    /// into the event (`data.amount`, `data.lines[0].amount`) and its message naming
    /// the rule broken (`minimum`, `required`, …).
    pub fn check(&self, event: &Event) -> Result<(), Violation> {
        let Some((_, validator)) = self.types.get(&event.event_type) else {
            return match self.unknown {
                UnknownTypes::Allow => Ok(()),
                UnknownTypes::Refuse => Err(Violation {
                    field: "type".into(),
                    rule: "known_type".into(),
                    message: format!(
                        "{:?} is not a known event type (GET /v1/event-types lists them)",
                        event.event_type
                    ),
                }),
            };
        };
        if !self.validate {
            return Ok(());
        }
        match validator.iter_errors(&event.data).next() {
            None => Ok(()),
            Some(error) => Err(Violation {
                field: field_of(error.instance_path().as_str()),
                rule: error.kind().keyword().to_owned(),
                message: format!(
                    "breaks the {} schema (rule `{}`): {error}",
                    event.event_type,
                    error.kind().keyword()
                ),
            }),
        }
    }
}

/// An event that breaks its type's schema (or whose type is refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Where, as a field of the event: `data`, `data.amount`, `data.lines[0]`, `type`.
    pub field: String,
    /// The rule (JSON Schema keyword) broken, e.g. `required`, `minimum`, `pattern`.
    pub rule: String,
    /// What is wrong, for people.
    pub message: String,
}

impl From<Violation> for FieldError {
    fn from(violation: Violation) -> Self {
        FieldError::new(violation.field, violation.message)
    }
}

/// A JSON pointer into `data` as a field name: `/lines/0/amount` → `data.lines[0].amount`.
fn field_of(pointer: &str) -> String {
    let mut field = String::from("data");
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            field.push_str(&format!("[{segment}]"));
        } else {
            field.push('.');
            field.push_str(&segment);
        }
    }
    field
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Defaults;
    use serde_json::json;

    fn event(event_type: &str, data: Value) -> Event {
        Event::from_json(
            json!({"type": event_type, "tenant": "acme", "data": data}),
            Defaults::Fresh,
        )
        .unwrap()
    }

    fn builtin() -> Catalog {
        Catalog::new(None, UnknownTypes::Allow, true).unwrap()
    }

    #[test]
    fn the_builtin_catalog_holds_the_finance_types_and_compiles() {
        let catalog = builtin();
        for name in [
            "payment.succeeded",
            "payment.failed",
            "payment.refunded",
            "invoice.created",
            "invoice.paid",
            "invoice.payment_failed",
            "invoice_correction.created",
            "dunning.level_changed",
            "expense.created",
            "expense.approved",
            "card_transaction.settled",
            "card_transaction.declined",
            "transfer.failed",
            "customer.created",
            "customer.changed",
            "customer.deleted",
            "supplier.created",
            "supplier.changed",
            "supplier.deleted",
            "contract.created",
            "order.created",
        ] {
            let found = catalog.get(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(found.source, Source::Builtin);
            assert_eq!(found.schema["type"], "object", "{name}");
        }
    }

    #[test]
    fn valid_events_pass_and_violations_name_the_path_and_the_rule() {
        let catalog = builtin();
        let paid = json!({"invoice_id": "in_1", "amount_paid": 125000, "currency": "EUR"});
        assert_eq!(catalog.check(&event("invoice.paid", paid)), Ok(()));
        let cases = [
            (
                "invoice.paid",
                json!({"invoice_id": "in_1", "amount_paid": -5, "currency": "EUR"}),
                "data.amount_paid",
                "minimum",
            ),
            (
                "invoice.paid",
                json!({"amount_paid": 5, "currency": "EUR"}),
                "data",
                "required",
            ),
            (
                "payment.succeeded",
                json!({"payment_id": "p", "amount": 5, "currency": "euro"}),
                "data.currency",
                "pattern",
            ),
            (
                "invoice.created",
                json!({"invoice_id": "in_1", "customer_id": "c", "amount_due": 1, "currency": "EUR",
                       "lines": [{"description": "x", "amount": "12"}]}),
                "data.lines[0].amount",
                "type",
            ),
            (
                "card_transaction.settled",
                json!({"transaction_id": "t", "card_id": "c", "amount": 1, "currency": "EUR",
                       "fx": {"original_amount": 1, "original_currency": "USD", "rate": 0}}),
                "data.fx.rate",
                "exclusiveMinimum",
            ),
            (
                "supplier.changed",
                json!({"supplier_id": "s", "changed_fields": ["bank_account"],
                       "bank_account": {"iban": "not an iban"}}),
                "data.bank_account.iban",
                "pattern",
            ),
            (
                "invoice.created",
                json!({"invoice_id": "in_1", "customer_id": "c", "amount_due": 1, "currency": "EUR",
                       "due_on": "next week"}),
                "data.due_on",
                "format",
            ),
        ];
        for (event_type, data, field, rule) in cases {
            let violation = catalog.check(&event(event_type, data.clone())).unwrap_err();
            assert_eq!(violation.field, field, "{data}");
            assert_eq!(violation.rule, rule, "{data}");
            assert!(violation.message.contains(rule), "{}", violation.message);
        }
    }

    #[test]
    fn unknown_types_are_allowed_or_refused_by_setting() {
        let unknown = event("ledger.closed", json!({"anything": true}));
        assert_eq!(builtin().check(&unknown), Ok(()));
        let strict = Catalog::new(None, UnknownTypes::Refuse, true).unwrap();
        let violation = strict.check(&unknown).unwrap_err();
        assert_eq!(
            (violation.field.as_str(), violation.rule.as_str()),
            ("type", "known_type")
        );
        // Validation off: known types pass whatever their data, the list stays.
        let off = Catalog::new(None, UnknownTypes::Allow, false).unwrap();
        assert_eq!(off.check(&event("invoice.paid", json!({"seq": 1}))), Ok(()));
        assert!(off.get("invoice.paid").is_some());
        assert_eq!("refuse".parse::<UnknownTypes>(), Ok(UnknownTypes::Refuse));
        assert!("strict".parse::<UnknownTypes>().is_err());
    }

    #[test]
    fn an_operators_file_adds_and_replaces_types_and_bad_schemas_are_refused() {
        let file = json!({"types": [
            {"type": "ledger.closed", "description": "A period was closed.",
             "schema": {"type": "object", "required": ["period"], "properties": {"period": {"type": "string"}}}},
            {"type": "invoice.paid", "schema": {"type": "object", "required": ["erp_ref"]}}
        ]})
        .to_string();
        let catalog = Catalog::new(Some(&file), UnknownTypes::Refuse, true).unwrap();
        assert_eq!(catalog.get("ledger.closed").unwrap().source, Source::File);
        assert_eq!(catalog.get("invoice.paid").unwrap().source, Source::File);
        assert!(catalog
            .check(&event("ledger.closed", json!({"period": "2026-11"})))
            .is_ok());
        let violation = catalog
            .check(&event("invoice.paid", json!({"invoice_id": "in_1"})))
            .unwrap_err();
        assert_eq!(violation.rule, "required");

        let bad =
            json!({"types": [{"type": "x.y", "schema": {"type": "no such type"}}]}).to_string();
        let err = Catalog::new(Some(&bad), UnknownTypes::Allow, true).unwrap_err();
        assert!(err.contains("x.y"), "{err}");
        let star = json!({"types": [{"type": "x.*", "schema": {}}]}).to_string();
        assert!(Catalog::new(Some(&star), UnknownTypes::Allow, true).is_err());
        assert!(Catalog::new(Some("{"), UnknownTypes::Allow, true).is_err());
    }

    #[test]
    fn pointers_become_field_names() {
        assert_eq!(field_of(""), "data");
        assert_eq!(field_of("/amount"), "data.amount");
        assert_eq!(field_of("/lines/0/amount"), "data.lines[0].amount");
        assert_eq!(field_of("/a~1b"), "data.a/b");
    }
}
