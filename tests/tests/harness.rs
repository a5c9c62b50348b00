//! The harness itself: a `HOOKLINE_*` setting exported in the caller's shell never
//! reaches the binaries a test starts. A test binary of its own with a single test,
//! because it changes its own process environment (no other test thread reads it).

use std::collections::HashMap;

use hookline_e2e::Deployment;

#[test]
fn stray_hookline_settings_of_the_caller_do_not_reach_the_binaries() {
    // Either of the first two would make a binary exit at start-up.
    std::env::set_var("HOOKLINE_DELIVERY_TIMEOUT", "not-a-duration");
    std::env::set_var("HOOKLINE_KAFKA_PROPERTIES", "hookline.no.such.property=1");
    std::env::set_var("HOOKLINE_TOPIC_PREFIX", "stray.");
    std::env::set_var("HOOKLINE_TEST_MARKER", "kept");
    let deployment = Deployment::new();

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

    // A real binary starts and gets ready despite the stray settings above.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let started = deployment.start("hookline-delivery").await;
        assert!(started.is_ok(), "{:?}", started.err());
    });
}
