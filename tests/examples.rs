//! The grpcurl scripts of `examples/grpcurl/`, run as a user would run them,
//! against a live server, with the real grpcurl binary and jq. CI installs
//! grpcurl (`.ci/run`) and sets `REQUIRE_EXAMPLES=1`, so there they cannot be
//! skipped; on a machine without grpcurl or jq they are skipped, loudly.

mod common;

use std::path::{Path, PathBuf};

use automation_control_plane::seed::ADMIN_EMAIL;
use common::{ADMIN_PASSWORD, TestApp};

/// grpcurl: `$GRPCURL`, the one `.ci/run` installs, or one on the PATH.
fn grpcurl() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("GRPCURL") {
        return Some(path.into());
    }
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/tools/grpcurl");
    if installed.exists() {
        return Some(installed);
    }
    on_path("grpcurl")
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Runs `examples/grpcurl/<script>` with `env`; returns its standard
/// output, failing the test with its standard error when it fails.
async fn run(script: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/grpcurl")
        .join(script);
    let output = tokio::process::Command::new("bash")
        .arg(&path)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn the_grpcurl_examples_work_as_written() {
    let (Some(grpcurl), Some(_)) = (grpcurl(), on_path("jq")) else {
        assert!(
            std::env::var_os("REQUIRE_EXAMPLES").is_none(),
            "REQUIRE_EXAMPLES is set but grpcurl or jq is missing"
        );
        eprintln!("SKIPPED: the grpcurl examples need grpcurl and jq (bash .ci/run installs them)");
        return;
    };
    let app = TestApp::spawn().await;
    let addr = app.addr.to_string();
    let grpcurl = grpcurl.to_string_lossy().into_owned();
    let base = [("ADDR", addr.as_str()), ("GRPCURL", grpcurl.as_str())];

    let login = [
        &base[..],
        &[("LOGIN", ADMIN_EMAIL), ("PASSWORD", ADMIN_PASSWORD)],
    ]
    .concat();
    let token = run("login.sh", &[], &login).await.trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let with_token = [&base[..], &[("TOKEN", token.as_str())]].concat();

    let user = run(
        "create-user.sh",
        &["ops", "ops@example.com", "a-long-password", "operator"],
        &with_token,
    )
    .await;
    let user: serde_json::Value = serde_json::from_str(user.trim()).expect("one JSON line");
    assert_eq!(user["username"], "ops");
    assert_eq!(user["roles"], serde_json::json!(["operator"]));
    // The new account can log in with the password the script gave it.
    let ops = [
        &base[..],
        &[("LOGIN", "ops"), ("PASSWORD", "a-long-password")],
    ]
    .concat();
    assert_eq!(
        run("login.sh", &[], &ops).await.trim().split('.').count(),
        3
    );

    // An API key works wherever a token does, within its scope.
    let key = run(
        "api-key.sh",
        &["example key", "jobs:read", "jobs:write", "audit:read"],
        &with_token,
    )
    .await
    .trim()
    .to_owned();
    assert!(key.starts_with("acp_"), "{key}");
    let with_key = [&base[..], &[("TOKEN", key.as_str())]].concat();
    assert!(
        run("audit.sh", &["api_keys.create"], &with_key)
            .await
            .contains("api_keys.create success")
    );

    let lifecycle = run("module-lifecycle.sh", &[], &with_token).await;
    for line in [
        "registered: backup-runner MODULE_STATUS_REGISTERED",
        "enabling: MODULE_STATUS_INSTALLING",
        "watch: MODULE_STATUS_ENABLED",
        "disabled: MODULE_STATUS_DISABLED",
        "deleted: true",
    ] {
        assert!(lifecycle.contains(line), "{line}:\n{lifecycle}");
    }

    let jobs = run("jobs.sh", &[], &with_token).await;
    for line in [
        "batch: 2 jobs",
        "watch: JOB_STATUS_COMPLETED",
        "pending thumbnails: 2",
    ] {
        assert!(jobs.contains(line), "{line}:\n{jobs}");
    }

    let audit = run("audit.sh", &["modules.enable"], &with_token).await;
    assert_eq!(audit.lines().count(), 1, "{audit}");
    assert!(audit.contains("modules.enable success modules/"), "{audit}");
    app.stop().await;
}
