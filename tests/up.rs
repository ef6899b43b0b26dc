//! `make up` as a user meets it: `pushdeploy-local up` is started as the program it is, and
//! the commands it prints under "try" are run as printed, from the repository's root, in the
//! order a user would: status, a deploy by hand, a push, a push whose smoke test fails, a
//! rollback, a reconcile, curl and the AWS CLI. Ctrl-C stops it and leaves its logs where it
//! says. The same with a user's configuration file (`make up CONFIG=…`), merged.
//!
//! The binaries must be built first (`cargo build --workspace --bins`; `make test` does).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use pushdeploy_local::lambdas::bin_dir;
use pushdeploy_local::moto::workspace_root;
use pushdeploy_tests::TempDir;
use serde_json::Value;

/// How long a rollout, a verification or a rollback may take.
const STEP: Duration = Duration::from_secs(120);

/// A running `pushdeploy-local up` and what it printed.
struct Up {
    child: Child,
    /// What `up` prints after its banner (the timeline), read as it comes so that `up` never
    /// blocks on a full pipe.
    rest: Option<std::thread::JoinHandle<String>>,
    banner: Vec<String>,
    tmp: TempDir,
}

impl Up {
    fn start(args: &[&str]) -> Self {
        let tmp = TempDir::new("pushdeploy-up").unwrap();
        let mut child = Command::new(bin_dir().join("pushdeploy-local"))
            .arg("up")
            .args(args)
            .current_dir(workspace_root())
            .env("PUSHDEPLOY_LOCAL_TMPDIR", &tmp.0)
            .env("PUSHDEPLOY_LOCAL_INSTANCES", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("target/debug/pushdeploy-local runs (cargo build --workspace --bins)");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut banner = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let mut line = String::new();
            let n = stdout.read_line(&mut line).unwrap();
            assert!(
                n > 0,
                "`up` stopped before it was ready:\n{}",
                banner.join("")
            );
            print!("up | {line}");
            let ready = line.starts_with("Press Ctrl-C");
            banner.push(line);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "`up` was not ready in 180 s");
        }
        let rest = std::thread::spawn(move || drain(stdout));
        Self {
            child,
            rest: Some(rest),
            banner,
            tmp,
        }
    }

    /// The lines under "try", as printed.
    fn commands(&self) -> Vec<String> {
        self.banner
            .iter()
            .skip_while(|l| !l.starts_with("try, from the repository's root:"))
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .map(|l| l.trim().to_owned())
            .collect()
    }

    /// The printed command that starts with `prefix` after the `export` line's PATH is set.
    fn command(&self, contains: &str) -> String {
        let found: Vec<String> = self
            .commands()
            .into_iter()
            .filter(|c| c.contains(contains))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one printed command with {contains:?}: {found:?}"
        );
        found[0].clone()
    }

    /// Runs a printed command as a user's shell would, after the printed `export` line.
    fn run(&self, command: &str) -> (bool, String) {
        let export = self.command("export PATH=");
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("{export}\n{command}"))
            .current_dir(workspace_root())
            .env("PUSHDEPLOY_LOCAL_TMPDIR", &self.tmp.0)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("$ {command}\n{text}");
        (out.status.success(), text)
    }

    /// Runs a printed command that must succeed; returns the JSON it printed last.
    fn json(&self, command: &str) -> Value {
        let (ok, text) = self.run(command);
        assert!(ok, "`{command}` failed:\n{text}");
        // The AWS CLI prints indented JSON; cargo-lambda one line after its own output.
        serde_json::from_str(text.trim()).unwrap_or_else(|_| {
            text.lines()
                .rev()
                .find_map(|l| {
                    serde_json::from_str::<Value>(l.trim())
                        .ok()
                        .filter(Value::is_object)
                })
                .unwrap_or(Value::Null)
        })
    }

    /// The printed status command's answer for the environment, until `done` holds.
    fn wait_for(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let status = self.command("\"action\":\"status\"");
        let deadline = Instant::now() + STEP;
        loop {
            let out = self.json(&status);
            let env = out["environments"][0].clone();
            if done(&env) {
                return env;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {STEP:?}: {env}"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Ctrl-C: `up` stops and says where its logs are kept; they are there.
    fn interrupt(&mut self) -> PathBuf {
        // SAFETY: sending a signal to the child we started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        let rest = self
            .rest
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default();
        assert!(
            status.success(),
            "`up` ended with {status} after Ctrl-C:\n{rest}"
        );
        let logs = rest
            .lines()
            .find_map(|l| l.strip_prefix("stopped; the logs are kept in "))
            .unwrap_or_else(|| panic!("`up` did not say where its logs are: {rest}"));
        PathBuf::from(logs)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        // A failed test stops the stack it started, as Ctrl-C would.
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: sending a signal to the child we started.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An image in the user's own podman storage, as `podman build` leaves it; removed when
/// dropped.
struct OwnImage {
    name: String,
    _context: TempDir,
}

impl OwnImage {
    /// A busybox web server whose `/` says `my own <label>: all systems go`, healthy on
    /// `/health`, listening where the sample app does.
    fn build(label: &str) -> Self {
        let context = TempDir::new("pushdeploy-own-image").unwrap();
        let www = context.0.join("www");
        std::fs::create_dir_all(&www).unwrap();
        std::fs::write(
            www.join("index.html"),
            format!("my own {label}: {}\n", pushdeploy_local::app::SMOKE_TEXT),
        )
        .unwrap();
        std::fs::write(www.join("health"), "ok\n").unwrap();
        std::fs::write(www.join("version"), format!("{label}\n")).unwrap();
        std::fs::copy("/bin/busybox", context.0.join("busybox")).unwrap();
        std::fs::write(
            context.0.join("Containerfile"),
            format!(
                "FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n\
                 ENTRYPOINT [\"/bin/busybox\", \"httpd\", \"-f\", \"-p\", \"{}\", \"-h\", \"/www\"]\n",
                pushdeploy_local::images::APP_PORT
            ),
        )
        .unwrap();
        let name = format!(
            "localhost/pushdeploy-test-own-app-{}:{label}",
            std::process::id()
        );
        let out = Command::new("podman")
            .args(pushdeploy_local::podman::GLOBAL_FLAGS)
            .args(["build", "--quiet", "-t", &name])
            .arg(&context.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            name,
            _context: context,
        }
    }
}

impl Drop for OwnImage {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(pushdeploy_local::podman::GLOBAL_FLAGS)
            .args(["rmi", "--force", &self.name])
            .output();
    }
}

fn drain(mut stdout: BufReader<ChildStdout>) -> String {
    let mut all = String::new();
    let mut line = String::new();
    while stdout.read_line(&mut line).is_ok_and(|n| n > 0) {
        print!("up | {line}");
        all.push_str(&line);
        line.clear();
    }
    all
}

fn tag_of(v: &Value) -> Option<&str> {
    v.get("tag").and_then(Value::as_str)
}

fn log_mentions(logs: &Path, name: &str, text: &str) -> bool {
    std::fs::read_to_string(logs.join(name)).is_ok_and(|l| l.contains(text))
}

#[test]
fn every_command_up_prints_works_as_printed() {
    let mut up = Up::start(&[]);
    assert!(
        up.banner
            .iter()
            .any(|l| l.contains("apps.web.registry: localhost:")),
        "the banner says what the local stack set in the configuration"
    );
    assert!(
        up.banner
            .iter()
            .any(|l| l.trim_start().starts_with("| apps:")),
        "the banner prints the configuration installed"
    );
    for value in [
        "  registry: localhost:",
        "  instances: { tag: { Role: web-staging } }",
        "  web/staging's host port: ",
    ] {
        assert!(
            up.banner.iter().any(|l| l.starts_with(value)),
            "the banner gives the value a user copies: {value:?}"
        );
    }

    let status = up.json(&up.command("\"action\":\"status\""));
    assert_eq!(
        status["environments"][0]["environment"], "staging",
        "{status}"
    );

    let started = up.json(&up.command("deployer --data-ascii"));
    assert_eq!(started["outcome"], "started", "{started}");
    up.wait_for("v1 verified", |e| tag_of(&e["last_verified"]) == Some("v1"));

    let (ok, text) = up.run(&up.command(" push v3 "));
    assert!(ok && text.contains("ECR push event"), "{text}");
    // What `push` prints to follow the rollout works as printed too.
    let follow = text
        .lines()
        .find_map(|l| l.strip_prefix("follow it: "))
        .unwrap_or_else(|| panic!("push printed no command to follow it: {text}"));
    let followed = up.json(follow);
    assert_eq!(
        followed["environments"][0]["environment"], "staging",
        "{followed}"
    );
    up.wait_for("v3 verified", |e| tag_of(&e["last_verified"]) == Some("v3"));
    let (ok, body) = up.run(&up.command("curl "));
    assert!(ok && body.contains("web v3"), "the host serves v3: {body}");

    let (ok, text) = up.run(&up.command(" push v4 --fails-smoke-test"));
    assert!(ok, "{text}");
    up.wait_for("v4 rolled back to v3", |e| {
        e["in_flight"].is_null()
            && tag_of(&e["current"]) == Some("v3")
            && e["deployments"].as_array().is_some_and(|d| {
                d.iter()
                    .any(|d| d["tag"] == "v4" && d["phase"] == "RolledBack")
            })
    });

    let rolled = up.json(&up.command("rollback --data-ascii"));
    assert_eq!(rolled["outcome"], "started", "{rolled}");
    up.wait_for("rolled back to v1", |e| {
        e["in_flight"].is_null() && tag_of(&e["current"]) == Some("v1")
    });

    // `push --from`: a user's own image, from podman's storage.
    let own = OwnImage::build("v5");
    let (ok, text) = up.run(&format!(
        "{} push v5 --from {}",
        bin_dir().join("pushdeploy-local").display(),
        own.name
    ));
    assert!(ok, "{text}");
    up.wait_for("the user's own image verified", |e| {
        tag_of(&e["last_verified"]) == Some("v5")
    });
    // The same push again (a CI job retried): ECR has the image already; nothing fails.
    let (ok, text) = up.run(&format!(
        "{} push v5 --from {}",
        bin_dir().join("pushdeploy-local").display(),
        own.name
    ));
    assert!(
        ok && text.contains("ECR push event"),
        "a repeated push: {text}"
    );
    let (ok, body) = up.run(&up.command("curl "));
    assert!(
        ok && body.contains("my own v5"),
        "the host serves the user's image: {body}"
    );

    let reconciled = up.json(&up.command("tracker --data-file"));
    assert!(reconciled.is_object(), "{reconciled}");
    for aws in ["ssm list-commands", "ecr describe-images", "dynamodb scan"] {
        let out = up.json(&up.command(aws));
        assert!(out.is_object(), "{aws}: {out}");
    }

    let logs = up.interrupt();
    assert!(
        log_mentions(&logs, "deployer-0.log", "v3"),
        "{} keeps the deployer's log",
        logs.display()
    );
    let _ = std::fs::remove_dir_all(logs.parent().unwrap_or(&logs));
}

#[test]
fn a_users_configuration_is_merged_and_deployed() {
    let config = workspace_root().join("events/config.yaml");
    let mut up = Up::start(&["--config", &config.display().to_string()]);
    let banner = up.banner.join("");
    for change in [
        "apps.web.registry: localhost:",
        "apps.web.environments.staging.target.ssm.ports[0]:",
        "apps.web.environments.staging.smoke.checks[0].url: http://127.0.0.1:",
        "apps.web.environments.production.target.ssm.instances: { tag: { pushdeploy-local: host } }",
        "apps.web.environments.production.target.ssm.container: web-web-production",
    ] {
        assert!(
            banner.contains(change),
            "the banner lists {change:?}:\n{banner}"
        );
    }
    let started = up.json(&up.command("deployer --data-ascii"));
    assert_eq!(started["outcome"], "started", "{started}");
    up.wait_for(
        "v1 verified on staging, by the file's own smoke check",
        |e| tag_of(&e["last_verified"]) == Some("v1"),
    );
    let logs = up.interrupt();
    let _ = std::fs::remove_dir_all(logs.parent().unwrap_or(&logs));
}
