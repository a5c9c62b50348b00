//! The event catalog: known event types, each with a JSON Schema of its `data`. The
//! built-in finance types (`catalog/builtin.json`: payments, invoices and corrections,
//! dunning, expenses, card transactions with FX details, transfers, customers and
//! suppliers with bank details, contracts, orders) plus an operator's own, from a file
//! of the same shape, plus the types the admin API adds (kept in the event types topic,
//! see [`EventTypeRecord`]). Validators are compiled once per type version; checking an
//! event is then one walk of its `data`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{Event, FieldError};
use crate::subscription::EventTypePattern;

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
    /// Added through the admin API (`POST`/`PUT /v1/event-types`), kept in the
    /// event types topic; it may replace a built-in or file type of the same name.
    Api,
}

/// A known event type, as `GET /v1/event-types` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct EventType {
    /// Its name.
    #[serde(rename = "type")]
    pub name: String,
    /// What it means.
    pub description: String,
    /// Built in, the operator's file, or the admin API.
    pub source: Source,
    /// Whether events of this type are checked against the schema (`false`: listed,
    /// subscribable, never checked).
    pub validate: bool,
    /// The fingerprint of its schema and `validate` flag: changes with either. Ingest
    /// marks the events it validated with it ([`VALIDATED_HEADER`]).
    pub version: String,
    /// The JSON Schema of its `data`.
    pub schema: Value,
}

/// The header ingest puts on an event record whose `data` it checked: the
/// [`EventType::version`] it was checked against. The router skips the schema check of
/// a record carrying the version its own catalog holds for the record's type (when it
/// is told to trust the header: any producer with write access to the events topic can
/// set it).
pub const VALIDATED_HEADER: &str = "hookline-validated";

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

/// Which `event_types` a subscription may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionTypes {
    /// Known types, or patterns matching at least one known type.
    Known,
    /// Any well-formed type or pattern.
    Any,
}

impl std::str::FromStr for SubscriptionTypes {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "known" => Ok(Self::Known),
            "any" => Ok(Self::Any),
            other => Err(format!("{other:?}: expected known or any")),
        }
    }
}

/// How events are checked against the catalog: the same settings in ingest (HTTP) and
/// in the router (records produced straight to the events topic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// What to do with events of unknown types.
    pub unknown: UnknownTypes,
    /// Whether known types are checked at all (a type's own `validate: false` turns it
    /// off for that type only).
    pub validate: bool,
    /// Tenants whose events are never checked against schemas (unknown types are
    /// still refused when [`UnknownTypes::Refuse`]).
    pub exempt_tenants: BTreeSet<String>,
}

impl Policy {
    /// Validation on for every tenant, unknown types allowed: the shipped defaults.
    pub fn validating() -> Self {
        Self {
            validate: true,
            ..Self::default()
        }
    }
}

/// A type compiled: what is listed, and its validator. Compiled once per version.
pub struct CompiledType {
    shown: EventType,
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for CompiledType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledType")
            .field("type", &self.shown.name)
            .field("version", &self.shown.version)
            .finish()
    }
}

impl CompiledType {
    /// Checks the name and compiles the schema; the error names what is wrong (the
    /// name, or the schema and the rule of JSON Schema it breaks).
    pub fn compile(
        name: &str,
        description: String,
        schema: Value,
        validate: bool,
        source: Source,
    ) -> Result<Self, FieldError> {
        crate::event::validate_name(name)
            .map_err(|e| FieldError::new("type", format!("event type {name:?}: {e}")))?;
        if name.contains('*') {
            return Err(FieldError::new(
                "type",
                format!("event type {name:?}: no `*` in a type"),
            ));
        }
        if !schema.is_object() && !schema.is_boolean() {
            return Err(FieldError::new(
                "schema",
                "a JSON Schema is an object (or true/false)",
            ));
        }
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| FieldError::new("schema", format!("not a valid JSON Schema: {e}")))?;
        let version = fingerprint(&schema, validate);
        Ok(Self {
            shown: EventType {
                name: name.to_owned(),
                description,
                source,
                validate,
                version,
                schema,
            },
            validator,
        })
    }

    /// The type as listed.
    pub fn shown(&self) -> &EventType {
        &self.shown
    }
}

/// A short, stable fingerprint of a schema and its `validate` flag.
fn fingerprint(schema: &Value, validate: bool) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(if validate { b"1" } else { b"0" });
    hash.update(schema.to_string().as_bytes());
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One event type as the admin API keeps it: the value of its record in the event
/// types topic (keyed by type name; a deleted type is a tombstone). Written by the
/// ingest API only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventTypeRecord {
    /// Its name.
    #[serde(rename = "type")]
    pub name: String,
    /// What it means.
    #[serde(default)]
    pub description: String,
    /// The JSON Schema its `data` must satisfy.
    pub schema: Value,
    /// Whether its events are checked (default true).
    #[serde(default = "yes")]
    pub validate: bool,
    /// When the API last wrote it.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

fn yes() -> bool {
    true
}

impl EventTypeRecord {
    /// The record compiled.
    pub fn compile(&self) -> Result<CompiledType, FieldError> {
        CompiledType::compile(
            &self.name,
            self.description.clone(),
            self.schema.clone(),
            self.validate,
            Source::Api,
        )
    }
}

/// The body of `POST /v1/event-types` (with `type`) and `PUT /v1/event-types/{type}`
/// (without, or the same).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTypeRequest {
    /// Its name (`POST`; in the path for `PUT`).
    #[serde(rename = "type")]
    pub name: Option<String>,
    /// What it means.
    #[serde(default)]
    pub description: String,
    /// The JSON Schema (2020-12 unless `$schema` says otherwise) of its `data`.
    pub schema: Option<Value>,
    /// Whether its events are checked (default true).
    #[serde(default = "yes")]
    pub validate: bool,
}

impl EventTypeRequest {
    /// The record to write for type `name` (the path's, for `PUT`), with its compiled
    /// form: an error names the field (`type`, `schema`) and what is wrong.
    pub fn into_record(
        self,
        name: Option<&str>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(EventTypeRecord, CompiledType), FieldError> {
        let name = match (name, self.name) {
            (Some(path), Some(body)) if path != body => {
                return Err(FieldError::new(
                    "type",
                    format!("{body:?} differs from the type in the path, {path:?}"),
                ))
            }
            (Some(path), _) => path.to_owned(),
            (None, Some(body)) => body,
            (None, None) => return Err(FieldError::new("type", "is required")),
        };
        let schema = self
            .schema
            .ok_or_else(|| FieldError::new("schema", "is required"))?;
        let record = EventTypeRecord {
            name,
            description: self.description,
            schema,
            validate: self.validate,
            updated_at: now,
        };
        let compiled = record.compile()?;
        Ok((record, compiled))
    }
}

/// The known types with their compiled validators, and how events are checked.
/// Cheap to clone (compiled types are shared).
#[derive(Clone)]
pub struct Catalog {
    types: BTreeMap<String, Arc<CompiledType>>,
    /// The versions of `types`, to tell a version this catalog holds at a glance.
    versions: HashSet<String>,
    policy: Arc<Policy>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("types", &self.types.keys().collect::<Vec<_>>())
            .field("policy", &self.policy)
            .finish()
    }
}

impl Catalog {
    /// The built-in types, then `file`'s (the operator's JSON, replacing built-in types
    /// of the same name), compiled; an error names the type whose schema is invalid.
    pub fn new(file: Option<&str>, policy: Policy) -> Result<Self, String> {
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
            let name = entry.name.clone();
            let compiled =
                CompiledType::compile(&name, entry.description, entry.schema, true, source)
                    .map_err(|e| match e.field.as_str() {
                        "schema" => format!("event type {name}: invalid schema: {}", e.message),
                        _ => e.message,
                    })?;
            types.insert(name, Arc::new(compiled));
        }
        Ok(Self::of(types, Arc::new(policy)))
    }

    fn of(types: BTreeMap<String, Arc<CompiledType>>, policy: Arc<Policy>) -> Self {
        let versions = types.values().map(|t| t.shown.version.clone()).collect();
        Self {
            types,
            versions,
            policy,
        }
    }

    /// This catalog with the admin API's types laid over it (each replacing a type of
    /// the same name): nothing is compiled again.
    pub fn overlaid<'a>(&self, api: impl IntoIterator<Item = &'a Arc<CompiledType>>) -> Self {
        let mut types = self.types.clone();
        for compiled in api {
            types.insert(compiled.shown.name.clone(), Arc::clone(compiled));
        }
        Self::of(types, Arc::clone(&self.policy))
    }

    /// Every known type, by name.
    pub fn types(&self) -> impl Iterator<Item = &EventType> {
        self.types.values().map(|t| &t.shown)
    }

    /// The type `name`, if known.
    pub fn get(&self, name: &str) -> Option<&EventType> {
        self.types.get(name).map(|t| &t.shown)
    }

    /// How events are checked.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Whether some type of this catalog has `version`.
    pub fn holds_version(&self, version: &str) -> bool {
        self.versions.contains(version)
    }

    /// Checks `event` against its type: `Ok(Some(version))` when its `data` was
    /// checked and satisfies the schema of that version, `Ok(None)` when nothing was
    /// checked (an unknown type allowed, validation off for the type or the tenant);
    /// else the first violation, its field the path into the event (`data.amount`,
    /// `data.lines[0].amount`) and its message naming the rule broken (`minimum`,
    /// `required`, …).
    pub fn check(&self, event: &Event) -> Result<Option<&str>, Violation> {
        self.check_trusting(event, None)
    }

    /// [`check`](Self::check), skipping the schema check when `validated` (the
    /// [`VALIDATED_HEADER`] of the record) is the version this catalog holds for the
    /// event's type: ingest checked it against that very schema.
    pub fn check_trusting(
        &self,
        event: &Event,
        validated: Option<&str>,
    ) -> Result<Option<&str>, Violation> {
        let Some(compiled) = self.types.get(&event.event_type) else {
            return match self.policy.unknown {
                UnknownTypes::Allow => Ok(None),
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
        if !self.policy.validate
            || !compiled.shown.validate
            || self.policy.exempt_tenants.contains(&event.tenant)
        {
            return Ok(None);
        }
        let version = compiled.shown.version.as_str();
        if validated == Some(version) {
            return Ok(Some(version));
        }
        match compiled.validator.iter_errors(event.data.value()).next() {
            None => Ok(Some(version)),
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

    /// Checks a subscription's `event_types` under `rule`: with
    /// [`SubscriptionTypes::Known`], each must be a known type or a pattern matching
    /// at least one; the error names the first that is not (`event_types[1]`).
    /// Entries that do not parse are left to the subscription's own validation.
    pub fn check_patterns(
        &self,
        patterns: &[String],
        rule: SubscriptionTypes,
    ) -> Result<(), FieldError> {
        if rule == SubscriptionTypes::Any {
            return Ok(());
        }
        for (i, text) in patterns.iter().enumerate() {
            let Ok(pattern) = EventTypePattern::parse(text) else {
                continue;
            };
            if !self.types.keys().any(|name| pattern.matches(name)) {
                return Err(FieldError::new(
                    format!("event_types[{i}]"),
                    format!(
                        "{text:?} names no known event type (GET /v1/event-types lists them; \
                         HOOKLINE_SUBSCRIPTION_EVENT_TYPES=known)"
                    ),
                ));
            }
        }
        Ok(())
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

    fn refusing() -> Policy {
        Policy {
            unknown: UnknownTypes::Refuse,
            ..Policy::validating()
        }
    }

    fn builtin() -> Catalog {
        Catalog::new(None, Policy::validating()).unwrap()
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
            // Hookline's own operational event, written by delivery workers: known, so
            // that refusing unknown types does not dead-letter it.
            "subscription.disabled",
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
        let version = catalog.get("invoice.paid").unwrap().version.clone();
        assert_eq!(
            catalog.check(&event("invoice.paid", paid)),
            Ok(Some(version.as_str()))
        );
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
        assert_eq!(builtin().check(&unknown), Ok(None));
        let strict = Catalog::new(None, refusing()).unwrap();
        let violation = strict.check(&unknown).unwrap_err();
        assert_eq!(
            (violation.field.as_str(), violation.rule.as_str()),
            ("type", "known_type")
        );
        // Validation off: known types pass whatever their data, the list stays.
        let off = Catalog::new(None, Policy::default()).unwrap();
        assert_eq!(
            off.check(&event("invoice.paid", json!({"seq": 1}))),
            Ok(None)
        );
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
        let catalog = Catalog::new(Some(&file), refusing()).unwrap();
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
        let err = Catalog::new(Some(&bad), Policy::validating()).unwrap_err();
        assert!(err.contains("x.y"), "{err}");
        let star = json!({"types": [{"type": "x.*", "schema": {}}]}).to_string();
        assert!(Catalog::new(Some(&star), Policy::validating()).is_err());
        assert!(Catalog::new(Some("{"), Policy::validating()).is_err());
    }

    fn request(body: Value) -> EventTypeRequest {
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn admin_types_need_a_valid_schema_and_a_name_and_overlay_the_catalog() {
        let now = chrono::Utc::now();
        let (record, compiled) = request(json!({"type": "ledger.closed",
            "schema": {"type": "object", "required": ["period"]}}))
        .into_record(None, now)
        .unwrap();
        assert_eq!(record.name, "ledger.closed");
        assert!(record.validate);
        let catalog = builtin().overlaid([&Arc::new(compiled)]);
        let shown = catalog.get("ledger.closed").unwrap();
        assert_eq!(shown.source, Source::Api);
        assert!(catalog.holds_version(&shown.version));
        let violation = catalog
            .check(&event("ledger.closed", json!({})))
            .unwrap_err();
        assert_eq!(
            (violation.field.as_str(), violation.rule.as_str()),
            ("data", "required")
        );
        // The built-in types stay.
        assert!(catalog.get("invoice.paid").is_some());
        // The record read back from the topic compiles to the same version.
        let again: EventTypeRecord =
            serde_json::from_slice(&serde_json::to_vec(&record).unwrap()).unwrap();
        assert_eq!(again.compile().unwrap().shown().version, shown.version);

        for (body, path, field, says) in [
            (
                json!({"type": "x.y", "schema": {"type": "no such type"}}),
                None,
                "schema",
                "not a valid JSON Schema",
            ),
            (
                json!({"type": "x.y", "schema": {"minimum": "five"}}),
                None,
                "schema",
                "not a valid JSON Schema",
            ),
            (
                json!({"type": "x.y", "schema": 5}),
                None,
                "schema",
                "object",
            ),
            (json!({"type": "x.y"}), None, "schema", "required"),
            (json!({"schema": {}}), None, "type", "required"),
            (json!({"type": "x.*", "schema": {}}), None, "type", "`*`"),
            (
                json!({"type": "bad type!", "schema": {}}),
                None,
                "type",
                "bad type!",
            ),
            (
                json!({"type": "a.b", "schema": {}}),
                Some("c.d"),
                "type",
                "differs",
            ),
        ] {
            let err = request(body.clone()).into_record(path, now).unwrap_err();
            assert_eq!(err.field, field, "{body}");
            assert!(err.message.contains(says), "{body}: {}", err.message);
        }
        // PUT names the type in the path; the body may leave it out.
        let (put, _) = request(json!({"schema": true}))
            .into_record(Some("ledger.opened"), now)
            .unwrap();
        assert_eq!(put.name, "ledger.opened");
    }

    #[test]
    fn versions_change_with_the_schema_and_the_flag_and_trusted_ones_skip_the_check() {
        let schema = json!({"type": "object", "required": ["period"]});
        let compile = |schema: &Value, validate| {
            CompiledType::compile(
                "ledger.closed",
                String::new(),
                schema.clone(),
                validate,
                Source::Api,
            )
            .unwrap()
            .shown()
            .version
            .clone()
        };
        let v1 = compile(&schema, true);
        assert_eq!(v1, compile(&schema, true));
        assert_ne!(v1, compile(&schema, false));
        assert_ne!(v1, compile(&json!({"type": "object"}), true));

        let catalog = builtin();
        let paid = catalog.get("invoice.paid").unwrap().version.clone();
        let broken = event("invoice.paid", json!({"amount_paid": -1}));
        // The header of this catalog's version: ingest checked it already.
        assert_eq!(
            catalog.check_trusting(&broken, Some(&paid)),
            Ok(Some(paid.as_str()))
        );
        // Any other version (a forged or stale header) is checked again.
        assert!(catalog
            .check_trusting(&broken, Some("0123456789abcdef"))
            .is_err());
        assert!(catalog.check_trusting(&broken, None).is_err());
    }

    #[test]
    fn validation_is_off_per_type_or_per_exempt_tenant() {
        let off = CompiledType::compile(
            "invoice.paid",
            String::new(),
            json!({"type": "object", "required": ["x"]}),
            false,
            Source::Api,
        )
        .unwrap();
        let catalog = builtin().overlaid([&Arc::new(off)]);
        assert_eq!(catalog.check(&event("invoice.paid", json!({}))), Ok(None));
        assert!(catalog
            .check(&event("payment.succeeded", json!({})))
            .is_err());

        let exempt = Catalog::new(
            None,
            Policy {
                exempt_tenants: BTreeSet::from(["acme".to_owned()]),
                unknown: UnknownTypes::Refuse,
                ..Policy::validating()
            },
        )
        .unwrap();
        assert_eq!(
            exempt.check(&event("payment.succeeded", json!({}))),
            Ok(None)
        );
        // Exempt from schemas, not from the known-types rule.
        assert_eq!(
            exempt
                .check(&event("ledger.closed", json!({})))
                .unwrap_err()
                .rule,
            "known_type"
        );
        let globex = Event::from_json(
            json!({"type": "payment.succeeded", "tenant": "globex", "data": {}}),
            Defaults::Fresh,
        )
        .unwrap();
        assert!(exempt.check(&globex).is_err());
    }

    #[test]
    fn subscriptions_name_known_types_or_patterns_matching_some() {
        let catalog = builtin();
        let known = |patterns: &[&str]| {
            let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
            catalog.check_patterns(&patterns, SubscriptionTypes::Known)
        };
        assert!(known(&["invoice.paid", "invoice.*", "*", "card_transaction.*"]).is_ok());
        let err = known(&["invoice.*", "ledger.closed"]).unwrap_err();
        assert_eq!(err.field, "event_types[1]");
        assert!(err.message.contains("ledger.closed"), "{}", err.message);
        assert_eq!(known(&["ledger.*"]).unwrap_err().field, "event_types[0]");
        // `invoice.*` does not match `invoice` itself, nor `invoices.*` anything.
        assert!(known(&["invoice"]).is_err());
        assert!(known(&["invoices.*"]).is_err());
        // Malformed entries are the subscription's own validation's business.
        assert!(known(&["in*v"]).is_ok());
        let any = vec!["ledger.closed".to_owned()];
        assert!(catalog.check_patterns(&any, SubscriptionTypes::Any).is_ok());
        assert_eq!(
            "known".parse::<SubscriptionTypes>(),
            Ok(SubscriptionTypes::Known)
        );
        assert!("some".parse::<SubscriptionTypes>().is_err());
    }

    #[test]
    fn the_subscription_disabled_event_of_delivery_workers_fits_its_schema() {
        let data = json!({"subscription_id": "sub_1", "url": "https://erp.example/h",
            "reason": "failing since 2026-12-01T00:00:00Z"});
        assert!(builtin()
            .check(&event("subscription.disabled", data))
            .is_ok_and(|version| version.is_some()));
    }

    #[test]
    fn pointers_become_field_names() {
        assert_eq!(field_of(""), "data");
        assert_eq!(field_of("/amount"), "data.amount");
        assert_eq!(field_of("/lines/0/amount"), "data.lines[0].amount");
        assert_eq!(field_of("/a~1b"), "data.a/b");
    }
}
