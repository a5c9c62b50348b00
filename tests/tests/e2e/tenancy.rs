//! Secure by default, tenants and API keys: ingest refuses to start without an admin
//! credential unless told loudly; the admin manages tenants' keys (shown once, stored as
//! hashes on a compacted topic, revoked on every instance); a tenant key reaches its own
//! tenant only, within its roles and quotas.

use std::time::Duration;

use hookline_e2e::{eventually, read_all, record_count, Api, Deployment, Proc, ADMIN_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};

const ALL_ROLES: [&str; 3] = ["events:publish", "subscriptions:manage", "attempts:read"];

/// Starts ingest with `extra` settings, expecting it to refuse; returns its log.
async fn refused_start(deployment: &Deployment, extra: &[(&str, &str)]) -> String {
    let mut proc: Proc = deployment.spawn_with("hookline-ingest", extra).unwrap();
    match proc.wait_ready(Duration::from_secs(30)).await {
        Ok(()) => panic!("ingest started with {extra:?}"),
        Err(_) => std::fs::read_to_string(&proc.log_path).unwrap(),
    }
}

#[tokio::test]
async fn ingest_refuses_to_start_without_an_admin_token_unless_told_loudly() {
    let mut deployment = Deployment::new();
    deployment.env.remove("HOOKLINE_ADMIN_TOKEN");

    let log = refused_start(&deployment, &[]).await;
    assert!(log.contains("HOOKLINE_ADMIN_TOKEN is not set"), "{log}");
    let log = refused_start(&deployment, &[("HOOKLINE_ADMIN_TOKEN", "")]).await;
    assert!(log.contains("HOOKLINE_ADMIN_TOKEN is too short"), "{log}");
    let log = refused_start(&deployment, &[("HOOKLINE_ADMIN_TOKEN", "short")]).await;
    assert!(log.contains("HOOKLINE_ADMIN_TOKEN is too short"), "{log}");
    // A typo is no opt-out (clap names the setting by its flag).
    let log = refused_start(&deployment, &[("HOOKLINE_INSECURE_NO_AUTH", "ture")]).await;
    assert!(
        log.contains("--insecure-no-auth") && log.contains("not a switch"),
        "{log}"
    );
    let both = [
        ("HOOKLINE_INSECURE_NO_AUTH", "true"),
        ("HOOKLINE_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    let log = refused_start(&deployment, &both).await;
    assert!(log.contains("both set"), "{log}");
    let quotas = [
        ("HOOKLINE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("HOOKLINE_TENANT_EVENTS_BURST", "10"),
        ("HOOKLINE_TENANT_MAX_BATCH_EVENTS", "11"),
    ];
    let log = refused_start(&deployment, &quotas).await;
    assert!(log.contains("HOOKLINE_TENANT_MAX_BATCH_EVENTS"), "{log}");
    assert!(
        !log.contains(ADMIN_TOKEN),
        "the token never reaches the logs"
    );

    // The loud opt-out: the API is open, and the log says so.
    let open = deployment
        .start_with("hookline-ingest", &[("HOOKLINE_INSECURE_NO_AUTH", "true")])
        .await
        .unwrap();
    let (status, body) = Api::anonymous(open.url())
        .call(Method::GET, "/v1/subscriptions", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    // Tenant keys keep their scope without an admin token.
    let anonymous_admin = Api::anonymous(open.url());
    let (_, key) = anonymous_admin
        .create_key("acme", &["events:publish"])
        .await
        .unwrap();
    let (status, body) = Api::new(open.url())
        .with_token(&key)
        .call(
            Method::POST,
            "/v1/events",
            Some(json!({"type": "a.b", "tenant": "globex"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    let log = std::fs::read_to_string(&open.log_path).unwrap();
    assert!(
        log.contains("WARN") && log.contains("authentication: NONE"),
        "{log}"
    );

    let guarded = deployment
        .start_with("hookline-ingest", &[("HOOKLINE_ADMIN_TOKEN", ADMIN_TOKEN)])
        .await
        .unwrap();
    let log = std::fs::read_to_string(&guarded.log_path).unwrap();
    assert!(
        log.contains("authentication: admin token and tenant API keys"),
        "{log}"
    );
    let (status, _) = Api::anonymous(guarded.url())
        .call(Method::GET, "/v1/subscriptions", None)
        .await
        .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test]
async fn api_keys_are_shown_once_stored_as_hashes_and_revoked_on_every_instance() {
    let deployment = Deployment::new();
    let first = deployment.start("hookline-ingest").await.unwrap();
    let second = deployment.start("hookline-ingest").await.unwrap();
    let admin = Api::new(first.url());

    let (status, created) = admin
        .call(
            Method::POST,
            "/v1/tenants/acme/api-keys",
            Some(json!({"roles": ["events:publish"], "description": "billing system"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("hk_"), "{key}");
    assert!(key.len() >= 70, "a key holds 32 random bytes: {key}");
    assert!(id.starts_with("key_"), "{id}");
    assert_eq!(created["tenant"], "acme");
    assert_eq!(created["roles"], json!(["events:publish"]));
    let other_tenant = admin.create_key("globex", &ALL_ROLES).await.unwrap();

    let (status, listed) = admin
        .call(Method::GET, "/v1/tenants/acme/api-keys", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let listed = listed["data"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "only acme's keys: {listed:?}");
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["roles"], json!(["events:publish"]));
    assert_eq!(listed[0]["description"], "billing system");
    assert!(listed[0]["created_at"].is_string());
    assert!(listed[0].get("key").is_none() && listed[0].get("sha256").is_none());

    // Only a hash reaches the topic.
    let records = read_all(&deployment.topic("api-keys")).unwrap();
    assert_eq!(records.len(), 2);
    for record in &records {
        let text = String::from_utf8_lossy(record.value.as_deref().unwrap_or_default());
        assert!(!text.contains(&key) && !text.contains(&other_tenant.1));
        assert!(!text.contains(&key[30..]), "not even the random part");
    }

    // The key works on both instances.
    let event = json!({"type": "invoice.paid", "tenant": "acme"});
    let on_first = Api::new(first.url()).with_token(&key);
    let on_second = Api::new(second.url()).with_token(&key);
    assert_eq!(on_first.send_events(event.clone()).await.unwrap().len(), 1);
    assert!(
        eventually(Duration::from_secs(10), || async {
            on_second.send_events(event.clone()).await.is_ok()
        })
        .await,
        "the second instance honours the key"
    );

    // A tenant key manages no keys, not even its tenant's.
    for (method, path) in [
        (Method::GET, "/v1/tenants/acme/api-keys".to_owned()),
        (Method::POST, "/v1/tenants/acme/api-keys".to_owned()),
        (Method::DELETE, format!("/v1/tenants/acme/api-keys/{id}")),
    ] {
        let body = (method == Method::POST).then(|| json!({"roles": ["events:publish"]}));
        let (status, error) = on_first.call(method.clone(), &path, body).await.unwrap();
        assert_eq!(status, 403, "{method} {path}: {error}");
        assert_eq!(error["error"]["code"], "forbidden");
    }

    // Revoked through one instance: refused there at once, on the other within the
    // documented bound (HOOKLINE_API_KEYS_MAX_STALENESS, 10 s by default).
    let (status, _) = admin
        .call(
            Method::DELETE,
            &format!("/v1/tenants/globex/api-keys/{id}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 404, "a key is revoked under its own tenant only");
    let (status, _) = admin
        .call(
            Method::DELETE,
            &format!("/v1/tenants/acme/api-keys/{id}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 204);
    let (status, error) = on_first
        .call(Method::POST, "/v1/events", Some(event.clone()))
        .await
        .unwrap();
    assert_eq!(status, 401, "{error}");
    assert_eq!(error["error"]["code"], "unauthorized");
    assert!(
        eventually(Duration::from_secs(12), || async {
            matches!(
                on_second
                    .call(Method::POST, "/v1/events", Some(event.clone()))
                    .await,
                Ok((401, _))
            )
        })
        .await,
        "the second instance stops honouring the revoked key"
    );
    let (status, _) = admin
        .call(
            Method::DELETE,
            &format!("/v1/tenants/acme/api-keys/{id}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 404);
    let (_, listed) = admin
        .call(Method::GET, "/v1/tenants/acme/api-keys", None)
        .await
        .unwrap();
    assert_eq!(listed["data"], json!([]));

    // A new instance reads the same state from the compacted topic.
    let third = deployment.start("hookline-ingest").await.unwrap();
    let (status, _) = Api::new(third.url())
        .with_token(&key)
        .call(Method::POST, "/v1/events", Some(event.clone()))
        .await
        .unwrap();
    assert_eq!(status, 401, "revoked for a new instance too");
    let (status, _) = Api::new(third.url())
        .with_token(&other_tenant.1)
        .call(Method::GET, "/v1/subscriptions", None)
        .await
        .unwrap();
    assert_eq!(status, 200, "the unrevoked key works there");

    // Bad requests name the field.
    for (body, field) in [
        (json!({}), "roles"),
        (json!({"roles": []}), "roles"),
        (json!({"roles": ["events:publish", "root"]}), "roles[1]"),
    ] {
        let (status, error) = admin
            .call(
                Method::POST,
                "/v1/tenants/acme/api-keys",
                Some(body.clone()),
            )
            .await
            .unwrap();
        assert_eq!(status, 422, "{body}: {error}");
        assert_eq!(error["error"]["field"], field);
    }

    for proc in [&first, &second, &third] {
        let log = std::fs::read_to_string(&proc.log_path).unwrap();
        assert!(
            !log.contains(&key) && !log.contains(&other_tenant.1),
            "keys never logged"
        );
        assert!(!log.contains(ADMIN_TOKEN));
    }
}

#[tokio::test]
async fn keys_without_a_valid_credential_or_role_are_refused() {
    let deployment = Deployment::new();
    let ingest = deployment.start("hookline-ingest").await.unwrap();
    let admin = Api::new(ingest.url());
    let (sub, _) = admin
        .subscribe(json!({"tenant": "acme", "url": "https://erp.example/h", "event_types": ["*"]}))
        .await
        .unwrap();
    let (_, publisher) = admin.create_key("acme", &["events:publish"]).await.unwrap();
    let (_, reader) = admin.create_key("acme", &["attempts:read"]).await.unwrap();
    let event = json!({"type": "invoice.paid", "tenant": "acme"});

    let forged = {
        // Well formed, right id, wrong secret.
        let mut chars: Vec<char> = publisher.chars().collect();
        let at = chars.len() - 5;
        chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
        chars.into_iter().collect::<String>()
    };
    for token in [
        None,
        Some("hk_nonsense"),
        Some("Bearer-less"),
        Some(forged.as_str()),
    ] {
        let api = match token {
            Some(token) => Api::new(ingest.url()).with_token(token),
            None => Api::anonymous(ingest.url()),
        };
        let (status, error) = api
            .call(Method::POST, "/v1/events", Some(event.clone()))
            .await
            .unwrap();
        assert_eq!(status, 401, "{token:?}: {error}");
        assert_eq!(error["error"]["code"], "unauthorized");
    }

    let publisher = Api::new(ingest.url()).with_token(&publisher);
    let reader = Api::new(ingest.url()).with_token(&reader);
    assert_eq!(publisher.send_events(event.clone()).await.unwrap().len(), 1);
    let attempts = format!("/v1/subscriptions/{sub}/attempts");
    let (status, _) = reader.call(Method::GET, &attempts, None).await.unwrap();
    assert_eq!(status, 200);

    let one = format!("/v1/subscriptions/{sub}");
    let needs_manage: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, "/v1/subscriptions".into(), None),
        (
            Method::POST,
            "/v1/subscriptions".into(),
            Some(json!({"url": "https://erp.example/h", "event_types": ["*"]})),
        ),
        (Method::GET, one.clone(), None),
        (Method::GET, format!("{one}/secret"), None),
        (Method::POST, format!("{one}/rotate-secret"), None),
        (Method::PATCH, one.clone(), Some(json!({"enabled": false}))),
        (Method::DELETE, one.clone(), None),
        (
            Method::POST,
            format!("{one}/replay"),
            Some(json!({"since": "2020-01-01T00:00:00Z"})),
        ),
        (
            Method::POST,
            format!("{one}/test"),
            Some(json!({"wait": "0s"})),
        ),
        (
            Method::POST,
            "/v1/dlq/redrive".into(),
            Some(json!({"subscription_id": sub})),
        ),
        (
            Method::POST,
            "/v1/deliveries/msg_00000000000000000000000000000000/resend".into(),
            None,
        ),
        (Method::GET, "/v1/jobs".into(), None),
        (
            Method::GET,
            "/v1/jobs/job_01JZZZZZZZZZZZZZZZZZZZZZZZ".into(),
            None,
        ),
        (
            Method::POST,
            "/v1/jobs/job_01JZZZZZZZZZZZZZZZZZZZZZZZ/cancel".into(),
            None,
        ),
    ];
    for (method, path, body) in needs_manage {
        for api in [&publisher, &reader] {
            let (status, error) = api.call(method.clone(), &path, body.clone()).await.unwrap();
            assert_eq!(status, 403, "{method} {path}: {error}");
            assert_eq!(error["error"]["code"], "forbidden");
            assert!(
                error["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("subscriptions:manage"),
                "{error}"
            );
        }
    }
    for path in [
        attempts.as_str(),
        "/v1/events/evt_1",
        "/v1/deliveries/msg_00000000000000000000000000000000",
    ] {
        let (status, _) = publisher.call(Method::GET, path, None).await.unwrap();
        assert_eq!(
            status, 403,
            "publishing does not read the message log: {path}"
        );
    }
    // The event catalog: any credential reads it, the admin alone writes it.
    let admin_only: Vec<(Method, &str, Option<Value>)> = vec![
        (
            Method::POST,
            "/v1/event-types",
            Some(json!({"type": "ledger.closed", "schema": {}})),
        ),
        (
            Method::PUT,
            "/v1/event-types/ledger.closed",
            Some(json!({"schema": {}})),
        ),
        (Method::DELETE, "/v1/event-types/invoice.paid", None),
    ];
    for api in [&publisher, &reader] {
        for path in ["/v1/event-types", "/v1/event-types/invoice.paid"] {
            let (status, _) = api.call(Method::GET, path, None).await.unwrap();
            assert_eq!(status, 200, "{path}");
        }
        for (method, path, body) in &admin_only {
            let (status, error) = api.call(method.clone(), path, body.clone()).await.unwrap();
            assert_eq!(status, 403, "{method} {path}: {error}");
            assert_eq!(error["error"]["code"], "forbidden");
        }
    }
    let (status, error) = reader
        .call(Method::POST, "/v1/events", Some(event))
        .await
        .unwrap();
    assert_eq!(status, 403, "{error}");
    assert!(error["error"]["message"]
        .as_str()
        .unwrap()
        .contains("events:publish"));

    let (status, shown) = admin.call(Method::GET, &one, None).await.unwrap();
    assert_eq!(
        (status, shown["enabled"].clone()),
        (200, json!(true)),
        "nothing changed"
    );
}

/// Queues a test event to subscription `id` without waiting; returns its (event id,
/// webhook-id).
async fn queued_test(api: &Api, id: &str) -> (String, String) {
    let (status, test) = api
        .call(
            Method::POST,
            &format!("/v1/subscriptions/{id}/test"),
            Some(json!({"wait": "0s"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "{test}");
    (
        test["event_id"].as_str().unwrap().to_owned(),
        test["message_id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_tenant_key_reaches_its_own_tenant_only_endpoint_by_endpoint() {
    let deployment = Deployment::new();
    let ingest = deployment.start("hookline-ingest").await.unwrap();
    let admin = Api::new(ingest.url());
    let (theirs, _) = admin
        .subscribe(
            json!({"tenant": "globex", "url": "https://globex.example/h", "event_types": ["*"]}),
        )
        .await
        .unwrap();
    let (_, key) = admin.create_key("acme", &ALL_ROLES).await.unwrap();
    let acme = Api::new(ingest.url()).with_token(&key);

    // Creating: the tenant may be left out (it can only be the key's own).
    let (status, created) = acme
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"url": "https://erp.example/h", "event_types": ["*"]})),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["tenant"], "acme");
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    let ours = created["id"].as_str().unwrap().to_owned();
    let (status, error) = acme
        .call(
            Method::POST,
            "/v1/subscriptions",
            Some(json!({"tenant": "globex", "url": "https://erp.example/h", "event_types": ["*"]})),
        )
        .await
        .unwrap();
    assert_eq!(status, 403, "{error}");
    assert_eq!(error["error"]["field"], "tenant");

    // A job of the other tenant's (a replay the admin started for it).
    let (status, their_job) = admin
        .call(
            Method::POST,
            &format!("/v1/subscriptions/{theirs}/replay"),
            Some(json!({"since": "2020-01-01T00:00:00Z"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 202, "{their_job}");
    let their_job = their_job["id"].as_str().unwrap().to_owned();

    // Another tenant's subscription (or job) looks exactly like a missing one, on
    // every route.
    let missing = "sub_01JZZZZZZZZZZZZZZZZZZZZZZZ";
    let missing_job = "job_01JZZZZZZZZZZZZZZZZZZZZZZZ";
    let routes = |id: &str, job: &str| -> Vec<(Method, String, Option<Value>)> {
        let one = format!("/v1/subscriptions/{id}");
        vec![
            (Method::GET, format!("/v1/jobs/{job}"), None),
            (Method::POST, format!("/v1/jobs/{job}/cancel"), None),
            (Method::GET, one.clone(), None),
            (Method::GET, format!("{one}/secret"), None),
            (
                Method::POST,
                format!("{one}/rotate-secret"),
                Some(json!({"overlap": "1h"})),
            ),
            (
                Method::PATCH,
                one.clone(),
                Some(json!({"url": "https://evil.example/h"})),
            ),
            (Method::GET, format!("{one}/attempts"), None),
            (
                Method::POST,
                format!("{one}/replay"),
                Some(json!({"since": "2020-01-01T00:00:00Z"})),
            ),
            // No delivery worker runs here: not waiting, the test is accepted (202).
            (
                Method::POST,
                format!("{one}/test"),
                Some(json!({"wait": "0s"})),
            ),
            (
                Method::POST,
                "/v1/dlq/redrive".into(),
                Some(json!({"subscription_id": id})),
            ),
            (Method::DELETE, one, None),
        ]
    };
    for ((method, path, body), (_, missing_path, missing_body)) in routes(&theirs, &their_job)
        .into_iter()
        .zip(routes(missing, missing_job))
    {
        let (status, error) = acme.call(method.clone(), &path, body).await.unwrap();
        let (missing_status, missing_error) = acme
            .call(method.clone(), &missing_path, missing_body)
            .await
            .unwrap();
        assert_eq!(status, 404, "{method} {path}: {error}");
        assert_eq!(
            (status, &error),
            (missing_status, &missing_error),
            "{method} {path}"
        );
    }
    let (status, error) = acme
        .call(
            Method::POST,
            "/v1/dlq/redrive",
            Some(json!({"since": "2020-01-01T00:00:00Z"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 403, "every tenant's dead letters: {error}");
    assert_eq!(error["error"]["field"], "subscription_id");

    // Listing shows the key's tenant only, whatever is asked.
    for path in ["/v1/subscriptions", "/v1/subscriptions?tenant=acme"] {
        let (_, listed) = acme.call(Method::GET, path, None).await.unwrap();
        let ids: Vec<&str> = listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["id"].as_str())
            .collect();
        assert_eq!(ids, [ours.as_str()], "{path}");
    }
    let (_, listed) = acme
        .call(Method::GET, "/v1/subscriptions?tenant=globex", None)
        .await
        .unwrap();
    assert_eq!(listed["data"], json!([]));
    for path in [
        "/v1/jobs".to_owned(),
        format!("/v1/jobs?subscription_id={theirs}"),
    ] {
        let (status, listed) = acme.call(Method::GET, &path, None).await.unwrap();
        assert_eq!(
            (status, &listed["data"]),
            (200, &json!([])),
            "{path}: not the other tenant's jobs"
        );
    }
    let (_, listed) = admin.call(Method::GET, "/v1/jobs", None).await.unwrap();
    assert_eq!(listed["data"][0]["id"], their_job.as_str(), "{listed}");

    // Publishing for another tenant is refused, and nothing of the request is written.
    let (status, error) = acme
        .call(
            Method::POST,
            "/v1/events",
            Some(json!({"type": "a.b", "tenant": "globex"})),
        )
        .await
        .unwrap();
    assert_eq!(status, 403, "{error}");
    assert_eq!(error["error"]["field"], "tenant");
    let mixed = json!([{"type": "a.b", "tenant": "acme"}, {"type": "a.b", "tenant": "globex"}]);
    let (status, error) = acme
        .call(Method::POST, "/v1/events", Some(mixed))
        .await
        .unwrap();
    assert_eq!(status, 403, "{error}");
    assert_eq!(error["error"]["field"], "[1].tenant");
    assert_eq!(record_count(&deployment.topic("events")).await.unwrap(), 0);

    // The message log: another tenant's event and delivery (a test event queued to
    // its subscription, no worker running) look exactly like missing ones.
    let (their_event, their_message) = queued_test(&admin, &theirs).await;
    let (our_event, our_message) = queued_test(&acme, &ours).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let mut indexed = true;
            for message in [&their_message, &our_message] {
                let path = format!("/v1/deliveries/{message}");
                indexed &= admin.call(Method::GET, &path, None).await.unwrap().0 == 200;
            }
            indexed
        })
        .await,
        "the admin sees both deliveries"
    );
    let log_routes = |event: &str, message: &str| -> Vec<(Method, String)> {
        vec![
            (Method::GET, format!("/v1/events/{event}")),
            (Method::GET, format!("/v1/deliveries/{message}")),
            (Method::POST, format!("/v1/deliveries/{message}/resend")),
        ]
    };
    for ((method, path), (_, missing_path)) in log_routes(&their_event, &their_message)
        .into_iter()
        .zip(log_routes(
            "evt_none",
            "msg_00000000000000000000000000000000",
        ))
    {
        let theirs = acme.call(method.clone(), &path, None).await.unwrap();
        let absent = acme
            .call(method.clone(), &missing_path, None)
            .await
            .unwrap();
        assert_eq!(theirs.0, 404, "{method} {path}: {}", theirs.1);
        assert_eq!(theirs, absent, "{method} {path}");
    }
    for (method, path) in log_routes(&our_event, &our_message) {
        let (status, answer) = acme.call(method.clone(), &path, None).await.unwrap();
        let expected = if method == Method::POST { 202 } else { 200 };
        assert_eq!(status, expected, "{method} {path}: {answer}");
    }

    // Its own tenant, every route works.
    acme.send_events(json!({"type": "a.b", "tenant": "acme"}))
        .await
        .unwrap();
    // A job of its own, finished (so that cancelling it is a 409, not a race).
    let own_job = acme
        .run_job(
            &format!("/v1/subscriptions/{ours}/replay"),
            json!({"since": "2020-01-01T00:00:00Z"}),
        )
        .await
        .unwrap();
    let own_job = own_job["id"].as_str().unwrap().to_owned();
    for (method, path, body) in routes(&ours, &own_job) {
        let (status, answer) = acme.call(method.clone(), &path, body).await.unwrap();
        let expected = if method == Method::DELETE {
            204
        } else if path.ends_with("/cancel") {
            409
        } else if path.ends_with("/test") || path.ends_with("/replay") || path.ends_with("/redrive")
        {
            202
        } else {
            200
        };
        assert_eq!(status, expected, "{method} {path}: {answer}");
    }

    // The other tenant's subscription is untouched; the admin still sees everything.
    let (status, shown) = admin
        .call(Method::GET, &format!("/v1/subscriptions/{theirs}"), None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(shown["url"], "https://globex.example/h");
    let (_, listed) = admin
        .call(Method::GET, "/v1/subscriptions", None)
        .await
        .unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
}

/// `POST /v1/events` with `key`: the status, `Retry-After` (seconds) if any, and body.
async fn post_with_retry_after(ingest: &str, key: &str, body: &Value) -> (u16, Option<u64>, Value) {
    let response = reqwest::Client::new()
        .post(format!("{ingest}/v1/events"))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

#[tokio::test]
async fn tenant_keys_are_held_to_the_tenant_quotas() {
    let mut deployment = Deployment::new();
    deployment
        .set("HOOKLINE_TENANT_MAX_SUBSCRIPTIONS", "2")
        .set("HOOKLINE_TENANT_EVENTS_PER_SECOND", "1")
        .set("HOOKLINE_TENANT_EVENTS_BURST", "3")
        .set("HOOKLINE_TENANT_MAX_BATCH_EVENTS", "3")
        .set(
            "HOOKLINE_TENANT_QUOTA_OVERRIDES",
            "globex:max_subscriptions=1",
        );
    let ingest = deployment.start("hookline-ingest").await.unwrap();
    let admin = Api::new(ingest.url());
    let (_, acme_key) = admin.create_key("acme", &ALL_ROLES).await.unwrap();
    let (_, globex_key) = admin.create_key("globex", &ALL_ROLES).await.unwrap();
    let acme = Api::new(ingest.url()).with_token(&acme_key);
    let new = json!({"url": "https://erp.example/h", "event_types": ["*"]});

    for _ in 0..2 {
        acme.subscribe(new.clone()).await.unwrap();
    }
    let (status, error) = acme
        .call(Method::POST, "/v1/subscriptions", Some(new.clone()))
        .await
        .unwrap();
    assert_eq!(status, 409, "{error}");
    assert_eq!(error["error"]["code"], "quota_exceeded");
    let mut for_acme = new.clone();
    for_acme["tenant"] = json!("acme");
    admin
        .subscribe(for_acme)
        .await
        .expect("the admin is not held to tenant quotas");
    // A tenant with a limit of its own.
    let globex = Api::new(ingest.url()).with_token(&globex_key);
    globex.subscribe(new.clone()).await.unwrap();
    let (status, error) = globex
        .call(Method::POST, "/v1/subscriptions", Some(new.clone()))
        .await
        .unwrap();
    assert_eq!(status, 409, "globex's own limit is 1: {error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1 subscriptions"),
        "{error}"
    );

    let event = json!({"type": "a.b", "tenant": "acme"});
    let (status, error) = acme
        .call(
            Method::POST,
            "/v1/events",
            Some(json!([event, event, event, event])),
        )
        .await
        .unwrap();
    assert_eq!(status, 422, "over the tenant batch limit: {error}");
    assert_eq!(error["error"]["field"], "$");
    let burst = json!([event, event, event]);
    assert_eq!(
        post_with_retry_after(&ingest.url(), &acme_key, &burst)
            .await
            .0,
        202
    );
    // One event a second from here: a few quick ones reach the limit.
    let mut refused = None;
    for _ in 0..5 {
        let (status, retry_after, body) =
            post_with_retry_after(&ingest.url(), &acme_key, &event).await;
        if status == 429 {
            refused = Some((retry_after, body));
            break;
        }
        assert_eq!(status, 202, "{body}");
    }
    let (retry_after, body) = refused.expect("the tenant's event rate is limited");
    assert!(retry_after.is_some_and(|secs| secs >= 1), "{retry_after:?}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let globex_event = json!({"type": "a.b", "tenant": "globex"});
    assert_eq!(
        post_with_retry_after(&ingest.url(), &globex_key, &globex_event)
            .await
            .0,
        202,
        "another tenant is not slowed"
    );
    let many: Vec<Value> = (0..10).map(|_| event.clone()).collect();
    assert_eq!(
        admin.send_events(json!(many)).await.unwrap().len(),
        10,
        "the admin is not rate limited"
    );
}
