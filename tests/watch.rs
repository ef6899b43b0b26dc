//! The README's `cargo lambda watch` way, as written there: the functions served by `cargo
//! lambda watch` with their settings in the environment (`PUSHDEPLOY_CONFIG_FILE` pointing at
//! `events/config.yaml`), and `cargo lambda invoke … --data-file events/…` answering. moto
//! stands in for the deployed stack's table, bus and document; only the ports differ from the
//! README's (a free one instead of 9000, so runs never collide).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pushdeploy_local::moto::{REGION, free_port, venv_tool, workspace_root};
use pushdeploy_tests::{BUS, DOCUMENT, TABLE, TempDir, World};
use serde_json::Value;

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // cargo lambda watch runs the function binaries as its children: stop the group.
        // SAFETY: signalling the process group of the child we started.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGTERM) };
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cargo_lambda_watch_serves_the_functions_as_the_readme_says() {
    let config = std::fs::read_to_string(workspace_root().join("events/config.yaml")).unwrap();
    let world = World::start(&config).await.unwrap();
    let dir = TempDir::new("pushdeploy-watch").unwrap();
    let port = free_port().unwrap();
    let log = std::fs::File::create(dir.0.join("watch.log")).unwrap();
    let mut watch = Command::new(venv_tool("cargo-lambda"));
    watch
        .args(["lambda", "watch", "--invoke-port", &port.to_string()])
        .current_dir(workspace_root())
        .env("PATH", path())
        .env("PUSHDEPLOY_TABLE", TABLE)
        .env("PUSHDEPLOY_EVENT_BUS", BUS)
        .env("PUSHDEPLOY_CONFIG_FILE", "events/config.yaml")
        .env("PUSHDEPLOY_SSM_DOCUMENT", DOCUMENT)
        .env("PUSHDEPLOY_AWS_ENDPOINT_URL", world.moto.endpoint())
        .env("AWS_REGION", REGION)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut watch, 0);
    let _watch = KillOnDrop(
        watch
            .spawn()
            .expect("cargo-lambda (make setup installs it)"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "cargo lambda watch did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The README's command, with the port named (its default is 9000).
    let out = Command::new(venv_tool("cargo-lambda"))
        .args(["lambda", "invoke", "--invoke-port", &port.to_string()])
        .args(["control", "--data-file", "events/control/status.json"])
        .current_dir(workspace_root())
        .env("PATH", path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo lambda invoke failed: {stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(dir.0.join("watch.log")).unwrap_or_default()
    );
    let status: Value = serde_json::from_str(stdout.trim()).unwrap();
    let env = &status["environments"][0];
    assert_eq!(env["app"], "web", "{status}");
    assert_eq!(env["environment"], "staging", "{status}");
    assert_eq!(env["target"], "ssm", "{status}");

    // Bytes the runtime itself cannot read as JSON are bad input, said in a few words, not
    // the runtime's deserialization error.
    let http = reqwest::Client::new();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    for body in [
        deep.into_bytes(),
        b"{\"action\": \"status\", \"app\": \"w\x00eb\"}".to_vec(),
        b"{\"action\": \"status\", \"limit\": 1e309}".to_vec(),
    ] {
        let shown = String::from_utf8_lossy(&body[..40.min(body.len())]).into_owned();
        let answer = http
            .post(format!(
                "http://127.0.0.1:{port}/2015-03-31/functions/control/invocations"
            ))
            .body(body)
            .send()
            .await
            .unwrap();
        let error: Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
        assert_eq!(
            error["errorType"], "NonRetryable.InvalidInput",
            "{shown}: {error}"
        );
        let message = error["errorMessage"].as_str().unwrap();
        assert!(message.len() < 200, "{shown}: {message}");
        assert!(
            message.contains("not JSON pushdeploy can read"),
            "{shown}: {message}"
        );
    }
}

/// The caller's PATH with the project's virtualenv first, as `make` sets it.
fn path() -> String {
    let venv = venv_tool("cargo-lambda")
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!("{venv}:{}", std::env::var("PATH").unwrap_or_default())
}
