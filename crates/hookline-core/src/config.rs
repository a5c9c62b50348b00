//! Configuration shared by the three binaries. Each setting is a flag with an
//! environment fallback (`HOOKLINE_…`); flags win over the environment, which wins
//! over the defaults.

use crate::topics::Topics;

/// Kafka connection and topic settings.
#[derive(Debug, Clone, clap::Args)]
pub struct KafkaArgs {
    /// Bootstrap brokers, comma separated.
    #[arg(
        long = "kafka-brokers",
        env = "HOOKLINE_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,

    /// Prefix of every topic name.
    #[arg(long, env = "HOOKLINE_TOPIC_PREFIX", default_value = "hookline.")]
    pub topic_prefix: String,

    /// Partitions of the topics this binary creates when they are missing.
    #[arg(long, env = "HOOKLINE_TOPIC_PARTITIONS", default_value_t = 8)]
    pub topic_partitions: i32,

    /// Replication factor of the topics this binary creates when they are missing:
    /// a number, or `auto` (3 when the cluster has at least three brokers, else 1).
    /// Topics created with three or more replicas get `min.insync.replicas=2`.
    #[arg(
        long,
        env = "HOOKLINE_TOPIC_REPLICATION",
        default_value = "auto",
        value_parser = parse_replication
    )]
    pub topic_replication: Replication,

    /// Extra librdkafka properties (`key=value`, comma separated or repeated), e.g.
    /// `security.protocol=SASL_SSL,sasl.mechanism=PLAIN`. Applied last, to every client.
    #[arg(
        long = "kafka-property",
        env = "HOOKLINE_KAFKA_PROPERTIES",
        value_delimiter = ',',
        value_parser = parse_property,
        hide_env_values = true
    )]
    pub properties: Vec<(String, String)>,

    /// How often librdkafka reports its statistics (`statistics.interval.ms`), turned
    /// into the `hookline_kafka_*` metrics and consumer lag (humantime; `0s` turns
    /// them off).
    #[arg(
        long = "kafka-statistics-interval",
        env = "HOOKLINE_KAFKA_STATISTICS_INTERVAL",
        value_parser = parse_duration,
        default_value = "5s"
    )]
    pub statistics_interval: std::time::Duration,
}

/// How many replicas the topics a binary creates get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// Three when the cluster has at least three brokers, else one.
    Auto,
    /// Exactly this many.
    Fixed(i32),
}

impl Replication {
    /// The replication factor for a cluster of `brokers` brokers.
    pub fn factor(self, brokers: usize) -> i32 {
        match self {
            Self::Fixed(factor) => factor,
            Self::Auto if brokers >= 3 => 3,
            Self::Auto => 1,
        }
    }
}

/// Parses `auto` or a replication factor of at least 1.
pub fn parse_replication(text: &str) -> Result<Replication, String> {
    if text.eq_ignore_ascii_case("auto") {
        return Ok(Replication::Auto);
    }
    match text.parse::<i32>() {
        Ok(factor) if factor >= 1 => Ok(Replication::Fixed(factor)),
        _ => Err(format!(
            "`{text}` is not a replication factor: expected `auto` or a number of at least 1"
        )),
    }
}

impl KafkaArgs {
    /// The deployment's topic names.
    pub fn topics(&self) -> Topics {
        Topics::new(self.topic_prefix.clone())
    }

    /// The operator's value of librdkafka property `key`, if one was given (the last,
    /// as it is applied last): where a binary sets a default of its own, the
    /// operator's choice wins.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, value)| value.as_str())
    }
}

/// Settings of the HTTP API's authentication.
#[derive(Clone, clap::Args)]
pub struct ApiArgs {
    /// The operator's admin credential: `Authorization: Bearer <token>` acts for every
    /// tenant and manages tenants' API keys. Required (at least 16 characters, no
    /// whitespace) unless `HOOKLINE_INSECURE_NO_AUTH=true`.
    #[arg(long, env = "HOOKLINE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Local demos only: run the API without an admin credential, every request without
    /// a key acting as the admin. Logged as a warning at start.
    #[arg(
        long,
        env = "HOOKLINE_INSECURE_NO_AUTH",
        value_parser = parse_switch,
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true"
    )]
    pub insecure_no_auth: bool,

    /// Longest time a tenant API key is honoured on a view of the API keys topic not
    /// confirmed up to date (humantime): the bound on how long a revoked key may keep
    /// working on an instance. Past it, tenant keys get `503` until the view catches up.
    #[arg(
        long,
        env = "HOOKLINE_API_KEYS_MAX_STALENESS",
        value_parser = parse_positive_duration,
        default_value = "10s"
    )]
    pub api_keys_max_staleness: std::time::Duration,
}

/// Never shows the admin token.
impl std::fmt::Debug for ApiArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiArgs")
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("insecure_no_auth", &self.insecure_no_auth)
            .field("api_keys_max_staleness", &self.api_keys_max_staleness)
            .finish()
    }
}

/// Fewest characters of an admin token.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// How the API authenticates requests.
#[derive(Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// The admin token, and tenant API keys.
    AdminToken(String),
    /// No admin token: requests without a key act as the admin (tenant keys still work).
    Insecure,
}

/// Never shows the admin token.
impl std::fmt::Debug for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::AdminToken(_) => "AdminToken(<redacted>)",
            Self::Insecure => "Insecure",
        })
    }
}

impl ApiArgs {
    /// The authentication mode these settings ask for, or why they are refused (the
    /// message names the settings; it never shows the token).
    pub fn auth_mode(&self) -> Result<AuthMode, String> {
        match (&self.admin_token, self.insecure_no_auth) {
            (Some(_), true) => Err(
                "HOOKLINE_ADMIN_TOKEN and HOOKLINE_INSECURE_NO_AUTH=true are both set: \
                 choose one"
                    .into(),
            ),
            (None, true) => Ok(AuthMode::Insecure),
            (None, false) => Err(
                "HOOKLINE_ADMIN_TOKEN is not set: the API refuses to run without \
                 authentication; set it (at least 16 characters), or set \
                 HOOKLINE_INSECURE_NO_AUTH=true for a local demo"
                    .into(),
            ),
            (Some(token), false) => {
                if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    Err("HOOKLINE_ADMIN_TOKEN must not contain whitespace".into())
                } else if token.chars().count() < MIN_ADMIN_TOKEN_LEN {
                    Err(format!(
                        "HOOKLINE_ADMIN_TOKEN is too short (empty or under \
                         {MIN_ADMIN_TOKEN_LEN} characters)"
                    ))
                } else if hookline_domain::api_key::key_id_of(token).is_some() {
                    Err(
                        "HOOKLINE_ADMIN_TOKEN has the shape of a tenant API key (`hk_…`); \
                         choose another"
                            .into(),
                    )
                } else {
                    Ok(AuthMode::AdminToken(token.clone()))
                }
            }
        }
    }
}

/// Per-tenant quotas on what tenant API keys may do (the admin credential is not
/// limited).
#[derive(Debug, Clone, clap::Args)]
pub struct TenantQuotaArgs {
    /// Most subscriptions one tenant may hold; a tenant key's create beyond it gets
    /// `409 quota_exceeded`.
    #[arg(
        long,
        env = "HOOKLINE_TENANT_MAX_SUBSCRIPTIONS",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub tenant_max_subscriptions: u32,

    /// Sustained events per second one tenant's keys may publish; beyond it, `429`
    /// with `Retry-After`.
    #[arg(
        long,
        env = "HOOKLINE_TENANT_EVENTS_PER_SECOND",
        default_value_t = 1000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub tenant_events_per_second: u32,

    /// Events one tenant's keys may publish in a burst above the sustained rate; at
    /// least `HOOKLINE_TENANT_MAX_BATCH_EVENTS`.
    #[arg(
        long,
        env = "HOOKLINE_TENANT_EVENTS_BURST",
        default_value_t = 2000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub tenant_events_burst: u32,

    /// Most events in one `POST /v1/events` with a tenant key; beyond it, `422`.
    #[arg(
        long,
        env = "HOOKLINE_TENANT_MAX_BATCH_EVENTS",
        default_value_t = 500,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub tenant_max_batch_events: u32,

    /// Tenants with limits of their own, `;`-separated:
    /// `<tenant>:<name>=<value>[,<name>=<value>…]`, names `max_subscriptions`,
    /// `events_per_second`, `events_burst`, `max_batch_events`; e.g.
    /// `acme:events_per_second=5000,events_burst=10000;globex:max_subscriptions=50`.
    #[arg(long, env = "HOOKLINE_TENANT_QUOTA_OVERRIDES", default_value = "")]
    pub tenant_quota_overrides: String,
}

impl TenantQuotaArgs {
    /// The quotas, or why they cannot all be met (naming the settings).
    pub fn quotas(&self) -> Result<hookline_domain::quota::QuotaPlan, String> {
        let quotas = hookline_domain::quota::TenantQuotas {
            max_subscriptions: self.tenant_max_subscriptions as usize,
            events_per_second: self.tenant_events_per_second,
            events_burst: self.tenant_events_burst,
            max_batch_events: self.tenant_max_batch_events as usize,
        };
        quotas.validate().map_err(|reason| {
            format!("HOOKLINE_TENANT_MAX_BATCH_EVENTS and HOOKLINE_TENANT_EVENTS_BURST: {reason}")
        })?;
        hookline_domain::quota::QuotaPlan::with_overrides(quotas, &self.tenant_quota_overrides)
            .map_err(|reason| format!("HOOKLINE_TENANT_QUOTA_OVERRIDES: {reason}"))
    }
}

/// Parses `true` or `false` (also `1`/`0`, `yes`/`no`, `on`/`off`), refusing anything
/// else so that a typo never silently means "off".
pub fn parse_switch(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "`{text}` is not a switch: expected `true` or `false`"
        )),
    }
}

/// Parses a humantime duration above zero.
pub fn parse_positive_duration(text: &str) -> Result<std::time::Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err(format!("`{text}` must be above zero"));
    }
    Ok(duration)
}

/// Which subscription URLs are accepted (ingest) and delivered to (delivery); both
/// binaries read the same settings, so what the API accepts is what workers send to.
#[derive(Debug, Clone, clap::Args)]
pub struct UrlArgs {
    /// Accept and deliver to `http://` subscription URLs (tests, local demos); without
    /// it only `https://` URLs are.
    #[arg(
        long,
        env = "HOOKLINE_DELIVERY_ALLOW_HTTP",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
        default_value = "false"
    )]
    pub delivery_allow_http: bool,

    /// The only ports subscription URLs may use (comma separated, e.g. `443,8443`);
    /// empty: any port.
    #[arg(
        long,
        env = "HOOKLINE_DELIVERY_ALLOWED_PORTS",
        default_value = "",
        value_parser = parse_ports
    )]
    pub delivery_allowed_ports: Ports,
}

/// A port allow-list (empty: any port).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ports(pub Vec<u16>);

fn parse_ports(text: &str) -> Result<Ports, String> {
    hookline_domain::egress::UrlRules::parse_ports(text).map(Ports)
}

impl UrlArgs {
    /// The URL rules these settings give.
    pub fn rules(&self) -> hookline_domain::egress::UrlRules {
        hookline_domain::egress::UrlRules::new(
            self.delivery_allow_http,
            self.delivery_allowed_ports.0.clone(),
        )
    }
}

/// Text that must not be shown: `Debug` redacts it, and clap never echoes it (it is
/// parsed by Hookline after clap, not by a value parser).
#[derive(Clone)]
pub struct Redacted(String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

fn redacted(text: &str) -> Result<Redacted, String> {
    Ok(Redacted(text.to_owned()))
}

/// The operator's keys that seal signing secrets and custom header values at rest
/// (ingest and delivery; the router never holds them).
#[derive(Debug, Clone, clap::Args)]
pub struct SecretsArgs {
    /// `id:base64key[,id:base64key…]`, 32-byte keys in standard base64: the first seals,
    /// all open (list a retired key after the new one until no record uses it).
    /// Required.
    #[arg(
        long,
        env = "HOOKLINE_SECRETS_KEYS",
        hide_env_values = true,
        value_parser = redacted
    )]
    pub secrets_keys: Option<Redacted>,
}

impl SecretsArgs {
    /// The keyring, or a start-up error saying what is wrong (never the keys).
    pub fn keyring(&self) -> anyhow::Result<hookline_domain::sealing::Keyring> {
        let Some(Redacted(text)) = &self.secrets_keys else {
            anyhow::bail!(
                "HOOKLINE_SECRETS_KEYS is not set: signing secrets and custom header values \
                 are sealed with it. Give `id:base64key`, 32 random bytes in base64 (e.g. \
                 `k1:$(openssl rand -base64 32)`); see docs/security.md"
            );
        };
        hookline_domain::sealing::Keyring::parse(text)
            .map_err(|e| anyhow::anyhow!("HOOKLINE_SECRETS_KEYS: {e}; see docs/security.md"))
    }
}

/// When a binary that is not getting its Kafka work done stops answering `/readyz`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProgressArgs {
    /// How long work made durable in Kafka (ingest's events, the router's batches,
    /// delivery's attempt records) may go without any completing before `/readyz`
    /// answers 503 (humantime, e.g. `15s`). Receivers' answers do not count.
    #[arg(
        long,
        env = "HOOKLINE_STALL_AFTER",
        value_parser = parse_duration,
        default_value = "15s"
    )]
    pub stall_after: std::time::Duration,

    /// How long a binary's main loop may stay wedged (no step completed within its
    /// bound, see `hookline_core::heartbeat`) before the process exits with code 70, so
    /// that its supervisor starts it afresh (humantime; `0s` never exits; `/healthz`
    /// answers 503 as soon as the loop is wedged).
    #[arg(
        long,
        env = "HOOKLINE_WEDGED_EXIT_AFTER",
        value_parser = parse_duration,
        default_value = "3m"
    )]
    pub wedged_exit_after: std::time::Duration,
}

/// How events published as CloudEvents are read.
#[derive(Debug, Clone, clap::Args)]
pub struct CloudEventsArgs {
    /// The CloudEvents extension attribute (structured mode) or `ce_<name>` header
    /// (binary mode) that holds the tenant.
    #[arg(
        long,
        env = "HOOKLINE_CLOUDEVENTS_TENANT_ATTRIBUTE",
        default_value = "tenant"
    )]
    pub cloudevents_tenant_attribute: String,
}

impl CloudEventsArgs {
    /// The mapping configuration.
    pub fn config(&self) -> hookline_domain::cloudevents::CloudEventsConfig {
        hookline_domain::cloudevents::CloudEventsConfig {
            tenant_attribute: self.cloudevents_tenant_attribute.clone(),
        }
    }
}

/// Log output settings.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log lines as human-readable text or as JSON objects.
    #[arg(long, env = "HOOKLINE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Distributed traces (OpenTelemetry, off unless an OTLP endpoint is set).
    #[command(flatten)]
    pub traces: TraceArgs,
}

/// OpenTelemetry trace export: the standard `OTEL_*` variables, plus Hookline's
/// sampling ratio. Traces are off unless one of the two endpoints is set.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// Base URL of an OTLP/HTTP collector (e.g. `http://otel-collector:4318`); spans go
    /// to `<url>/v1/traces`. Setting it (or the traces endpoint) turns traces on.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_parser = parse_otlp_endpoint)]
    pub otlp_endpoint: Option<url::Url>,

    /// Full URL spans are posted to (OTLP/HTTP, protobuf), used as is; wins over
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", value_parser = parse_otlp_endpoint)]
    pub otlp_traces_endpoint: Option<url::Url>,

    /// The `service.name` of this process's spans; each binary's own name
    /// (`hookline-ingest`, `hookline-router`, `hookline-delivery`) when unset.
    #[arg(long = "otel-service-name", env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,

    /// Share of new traces recorded, from 0.0 to 1.0 (parent-based: a span whose
    /// parent came with a `traceparent` follows the parent's sampled flag).
    #[arg(
        long,
        env = "HOOKLINE_TRACE_SAMPLE_RATIO",
        default_value_t = 1.0,
        value_parser = parse_ratio
    )]
    pub trace_sample_ratio: f64,
}

impl TraceArgs {
    /// Where spans are posted, when traces are on.
    pub fn traces_url(&self) -> Option<url::Url> {
        if let Some(url) = &self.otlp_traces_endpoint {
            return Some(url.clone());
        }
        let base = self.otlp_endpoint.as_ref()?;
        // The specification's rule: the signal's path appended to the base URL's path.
        let mut url = base.clone();
        let path = format!("{}/v1/traces", base.path().trim_end_matches('/'));
        url.set_path(&path);
        Some(url)
    }
}

/// An `http://` or `https://` URL.
fn parse_otlp_endpoint(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        other => Err(format!(
            "`{text}` has scheme `{other}`: an OTLP/HTTP endpoint is http:// or https://"
        )),
    }
}

/// A number from 0.0 to 1.0.
fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("`{text}` is not a ratio from 0.0 to 1.0")),
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not key=value"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("{text:?} has an empty key"));
    }
    Ok((key.to_owned(), value.trim().to_owned()))
}

pub use hookline_domain::duration::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kafka: KafkaArgs,
    }

    #[derive(Parser)]
    struct TraceCli {
        #[command(flatten)]
        log: LogArgs,
    }

    #[test]
    fn traces_are_off_without_an_endpoint_and_post_to_the_signal_path() {
        let off = TraceCli::try_parse_from(["x"]).unwrap();
        assert_eq!(off.log.traces.traces_url(), None);
        assert_eq!(off.log.traces.trace_sample_ratio, 1.0);
        let base =
            TraceCli::try_parse_from(["x", "--otlp-endpoint", "http://collector:4318"]).unwrap();
        assert_eq!(
            base.log.traces.traces_url().map(String::from),
            Some("http://collector:4318/v1/traces".to_owned())
        );
        let prefixed =
            TraceCli::try_parse_from(["x", "--otlp-endpoint", "https://gw.example/otlp/"]).unwrap();
        assert_eq!(
            prefixed.log.traces.traces_url().map(String::from),
            Some("https://gw.example/otlp/v1/traces".to_owned())
        );
        let full = TraceCli::try_parse_from([
            "x",
            "--otlp-endpoint",
            "http://collector:4318",
            "--otlp-traces-endpoint",
            "http://other:4318/custom",
        ])
        .unwrap();
        assert_eq!(
            full.log.traces.traces_url().map(String::from),
            Some("http://other:4318/custom".to_owned()),
            "the traces endpoint is used as is, and wins"
        );
    }

    #[test]
    fn bad_trace_settings_are_refused() {
        for args in [
            ["x", "--otlp-endpoint", "collector:4318"],
            ["x", "--otlp-endpoint", "grpc://collector:4317"],
            ["x", "--trace-sample-ratio", "1.5"],
            ["x", "--trace-sample-ratio", "-0.1"],
            ["x", "--trace-sample-ratio", "half"],
        ] {
            assert!(TraceCli::try_parse_from(args).is_err(), "{args:?}");
        }
        let half = TraceCli::try_parse_from(["x", "--trace-sample-ratio", "0.5"]).unwrap();
        assert_eq!(half.log.traces.trace_sample_ratio, 0.5);
    }

    #[test]
    fn the_last_value_of_a_property_is_the_operators() {
        let cli = Cli::try_parse_from([
            "x",
            "--kafka-property",
            "linger.ms=5,acks=all",
            "--kafka-property",
            "linger.ms=20",
        ])
        .unwrap();
        assert_eq!(cli.kafka.property("linger.ms"), Some("20"));
        assert_eq!(cli.kafka.property("acks"), Some("all"));
        assert_eq!(cli.kafka.property("fetch.wait.max.ms"), None);
    }

    #[test]
    fn properties_parse_and_flags_have_defaults() {
        let cli = Cli::try_parse_from([
            "x",
            "--kafka-property",
            "security.protocol=SASL_SSL,sasl.mechanism=PLAIN",
        ])
        .unwrap();
        assert_eq!(
            cli.kafka.properties,
            vec![
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.mechanism".into(), "PLAIN".into())
            ]
        );
        assert_eq!(
            cli.kafka.topics().events(),
            format!("{}events", cli.kafka.topic_prefix)
        );
        assert!(Cli::try_parse_from(["x", "--kafka-property", "novalue"]).is_err());
    }

    #[derive(Parser)]
    struct ApiCli {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        quotas: TenantQuotaArgs,
    }

    fn api(args: &[&str]) -> Result<AuthMode, String> {
        let cli = ApiCli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.api.auth_mode()
    }

    #[test]
    fn the_api_needs_an_admin_token_or_an_explicit_opt_out() {
        let refused = api(&[]).unwrap_err();
        assert!(
            refused.contains("HOOKLINE_ADMIN_TOKEN is not set"),
            "{refused}"
        );
        assert!(refused.contains("HOOKLINE_INSECURE_NO_AUTH"), "{refused}");
        let token = "0123456789abcdef";
        assert_eq!(
            api(&["--admin-token", token]),
            Ok(AuthMode::AdminToken(token.into()))
        );
        for bad in ["", "abc12", "0123456789 abcdef"] {
            let refused = api(&["--admin-token", bad]).unwrap_err();
            assert!(
                refused.contains("HOOKLINE_ADMIN_TOKEN"),
                "{bad:?}: {refused}"
            );
            assert!(
                bad.is_empty() || !refused.contains(bad),
                "the token is not shown"
            );
        }
        let key = hookline_domain::api_key::ApiKey::generate();
        assert!(api(&["--admin-token", key.expose()]).is_err());
        assert_eq!(api(&["--insecure-no-auth"]), Ok(AuthMode::Insecure));
        assert_eq!(api(&["--insecure-no-auth", "true"]), Ok(AuthMode::Insecure));
        assert!(api(&["--insecure-no-auth", "false"]).is_err());
        let typo = api(&["--insecure-no-auth", "ture"]).unwrap_err();
        assert!(typo.contains("not a switch"), "{typo}");
        assert!(api(&["--insecure-no-auth", "--admin-token", token])
            .unwrap_err()
            .contains("both"));
        assert!(format!("{:?}", AuthMode::AdminToken(token.into())).contains("redacted"));
        assert!(api(&["--api-keys-max-staleness", "0s"]).is_err());
    }

    #[test]
    fn quotas_have_defaults_and_must_fit_together() {
        let cli = ApiCli::try_parse_from(["x"]).unwrap();
        let plan = cli.quotas.quotas().unwrap();
        assert!(plan.tenants.is_empty());
        let quotas = plan.default;
        assert_eq!(quotas.max_subscriptions, 1000);
        assert_eq!(quotas.events_per_second, 1000);
        assert_eq!(quotas.events_burst, 2000);
        assert_eq!(quotas.max_batch_events, 500);
        let cli =
            ApiCli::try_parse_from(["x", "--tenant-quota-overrides", "acme:max_subscriptions=5"])
                .unwrap();
        assert_eq!(cli.quotas.quotas().unwrap().of("acme").max_subscriptions, 5);
        let cli =
            ApiCli::try_parse_from(["x", "--tenant-quota-overrides", "acme:speed=5"]).unwrap();
        let refused = cli.quotas.quotas().unwrap_err();
        assert!(
            refused.contains("HOOKLINE_TENANT_QUOTA_OVERRIDES"),
            "{refused}"
        );
        let cli = ApiCli::try_parse_from([
            "x",
            "--tenant-events-burst",
            "10",
            "--tenant-max-batch-events",
            "11",
        ])
        .unwrap();
        let refused = cli.quotas.quotas().unwrap_err();
        assert!(
            refused.contains("HOOKLINE_TENANT_EVENTS_BURST"),
            "{refused}"
        );
        assert!(ApiCli::try_parse_from(["x", "--tenant-events-per-second", "0"]).is_err());
    }

    #[derive(Parser)]
    struct Delivery {
        #[command(flatten)]
        urls: UrlArgs,
        #[command(flatten)]
        secrets: SecretsArgs,
    }

    #[test]
    fn urls_are_https_only_and_keys_required_by_default() {
        let cli = Delivery::try_parse_from(["x"]).unwrap();
        assert_eq!(
            cli.urls.rules(),
            hookline_domain::egress::UrlRules::default()
        );
        let err = cli.secrets.keyring().unwrap_err().to_string();
        assert!(err.contains("HOOKLINE_SECRETS_KEYS is not set"), "{err}");

        let key = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let cli = Delivery::try_parse_from([
            "x",
            "--delivery-allow-http",
            "true",
            "--delivery-allowed-ports",
            "443,8443",
            "--secrets-keys",
            key,
        ])
        .unwrap();
        assert_eq!(
            cli.urls.rules(),
            hookline_domain::egress::UrlRules::new(true, vec![443, 8443])
        );
        assert_eq!(cli.secrets.keyring().unwrap().ids(), ["k1"]);
        assert!(!format!("{:?}", cli.secrets).contains("AAEC"));

        let cli = Delivery::try_parse_from(["x", "--secrets-keys", "k1:c2hvcnQ="]).unwrap();
        let err = cli.secrets.keyring().unwrap_err().to_string();
        assert!(err.contains("not 32") && !err.contains("c2hvcnQ"), "{err}");
        assert!(Delivery::try_parse_from(["x", "--delivery-allowed-ports", "https"]).is_err());
    }

    #[test]
    fn replication_follows_the_cluster_unless_fixed() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.kafka.topic_replication, Replication::Auto);
        assert_eq!(Replication::Auto.factor(1), 1);
        assert_eq!(Replication::Auto.factor(2), 1);
        assert_eq!(Replication::Auto.factor(3), 3);
        assert_eq!(Replication::Auto.factor(9), 3);
        let cli = Cli::try_parse_from(["x", "--topic-replication", "2"]).unwrap();
        assert_eq!(cli.kafka.topic_replication, Replication::Fixed(2));
        assert_eq!(Replication::Fixed(2).factor(9), 2);
        assert!(Cli::try_parse_from(["x", "--topic-replication", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--topic-replication", "three"]).is_err());
    }
}

/// Settings of the event catalog and of checking events against it, shared by ingest
/// (events over HTTP) and the router (records produced straight to the events topic),
/// so that both check alike.
#[derive(Debug, Clone, clap::Args)]
pub struct CatalogArgs {
    /// Check each event's `data` against its type's JSON Schema in the event catalog:
    /// at ingest a `422` naming the path and the rule, in the router (records produced
    /// straight to Kafka) a dead letter on the events DLQ with the reason.
    #[arg(
        long,
        env = "HOOKLINE_EVENT_VALIDATION",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub event_validation: bool,

    /// Events of a type the catalog does not know: `allow` (unchecked) or `refuse`
    /// (`422` naming `type`; dead-lettered when produced straight to Kafka).
    #[arg(long, env = "HOOKLINE_EVENT_TYPES_UNKNOWN", default_value = "allow")]
    pub event_types_unknown: hookline_domain::catalog::UnknownTypes,

    /// A JSON file of the operator's own event types and schemas,
    /// `{"types": [{"type", "description", "schema"}]}`, added to the built-in
    /// catalog (a type of the same name replaces the built-in one).
    #[arg(long, env = "HOOKLINE_EVENT_TYPES_FILE")]
    pub event_types_file: Option<std::path::PathBuf>,

    /// Tenants whose events are not checked against schemas (comma-separated; unknown
    /// types are still refused when `HOOKLINE_EVENT_TYPES_UNKNOWN=refuse`).
    #[arg(
        long,
        env = "HOOKLINE_EVENT_VALIDATION_EXEMPT_TENANTS",
        value_delimiter = ',',
        value_parser = parse_tenant
    )]
    pub event_validation_exempt_tenants: Vec<String>,
}

fn parse_tenant(text: &str) -> Result<String, String> {
    let tenant = text.trim();
    if tenant.is_empty() || tenant.chars().any(char::is_whitespace) {
        return Err(format!("{text:?}: expected a tenant id"));
    }
    Ok(tenant.to_owned())
}

impl CatalogArgs {
    /// How events are checked.
    pub fn policy(&self) -> hookline_domain::catalog::Policy {
        hookline_domain::catalog::Policy {
            unknown: self.event_types_unknown,
            validate: self.event_validation,
            exempt_tenants: self
                .event_validation_exempt_tenants
                .iter()
                .cloned()
                .collect(),
        }
    }

    /// The built-in types and the operator's file, compiled once; a file that does not
    /// read or holds an invalid schema is an error naming the setting.
    pub fn base_catalog(&self) -> Result<hookline_domain::catalog::Catalog, String> {
        let file = match &self.event_types_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("HOOKLINE_EVENT_TYPES_FILE {}: {e}", path.display()))?,
            ),
            None => None,
        };
        hookline_domain::catalog::Catalog::new(file.as_deref(), self.policy()).map_err(|e| {
            match &self.event_types_file {
                Some(path) => format!("HOOKLINE_EVENT_TYPES_FILE {}: {e}", path.display()),
                None => e,
            }
        })
    }
}
