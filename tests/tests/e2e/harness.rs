//! The harness itself: a `HOOKLINE_*` setting exported in the caller's shell never
//! reaches the binaries a test starts, and [`eventually`] waits as long as it is told.
//! The stray settings go into an explicit caller environment
//! ([`Deployment::with_caller_env`]), not into this process's, which other tests share.

use std::collections::HashMap;
use std::ffi::OsString;
use std::time::{Duration, Instant};

use hookline_e2e::{eventually, Deployment};

#[tokio::test]
async fn stray_hookline_settings_of_the_caller_do_not_reach_the_binaries() {
    // This process's environment plus stray settings, as a developer's shell might
    // export them. Either of the first two would make a binary exit at start-up.
    let mut caller: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    caller.extend(
        [
            ("HOOKLINE_DELIVERY_TIMEOUT", "not-a-duration"),
            ("HOOKLINE_KAFKA_PROPERTIES", "hookline.no.such.property=1"),
            ("HOOKLINE_TOPIC_PREFIX", "stray."),
            ("HOOKLINE_TEST_MARKER", "kept"),
        ]
        .map(|(k, v)| (k.into(), v.into())),
    );
    let deployment = Deployment::new().with_caller_env(caller);

    // What a child process sees, through the same command the harness starts binaries with.
    let output = deployment.command("env").output().expect("run env");
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    let seen: HashMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(
        seen.get("HOOKLINE_DELIVERY_TIMEOUT"),
        None,
        "stray setting passed on"
    );
    assert_eq!(
        seen.get("HOOKLINE_KAFKA_PROPERTIES"),
        None,
        "stray setting passed on"
    );
    assert_eq!(
        seen.get("HOOKLINE_TOPIC_PREFIX").copied(),
        Some(deployment.prefix.as_str()),
        "the deployment's own value wins"
    );
    assert_eq!(
        seen.get("HOOKLINE_TEST_MARKER").copied(),
        Some("kept"),
        "the harness's own HOOKLINE_TEST_* settings stay"
    );
    assert!(
        seen.contains_key("PATH"),
        "the rest of the caller's environment is passed on"
    );

    // A real binary starts and gets ready despite the stray settings above.
    let started = deployment.start("hookline-delivery").await;
    assert!(started.is_ok(), "{:?}", started.err());
}

#[tokio::test]
async fn eventually_checks_until_the_condition_holds_or_the_patience_is_up() {
    let mut checks = 0;
    let held = eventually(Duration::from_secs(5), || {
        checks += 1;
        checks == 3
    })
    .await;
    assert!(held, "a condition that comes to hold is seen");
    assert_eq!(checks, 3, "no check after it held");

    let started = Instant::now();
    let held = eventually(Duration::from_millis(350), || async { false }).await;
    let waited = started.elapsed();
    assert!(!held);
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(2),
        "gives up once the patience is up: {waited:?}"
    );
    assert!(
        eventually(Duration::ZERO, || true).await,
        "checks at least once"
    );
}
