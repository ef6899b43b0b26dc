//! A podman of its own for one part of a run (the container host, the image builder): its
//! own storage, configuration and auth file under the run directory, so runs never see each
//! other's containers or images, and removing the directory removes everything. podman runs
//! with `runc` and the cgroupfs manager, and with lowered rlimits (runc cannot raise them
//! here); the local registry is marked insecure (plain HTTP).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail};

pub struct Podman {
    pub dir: PathBuf,
    env: Vec<(String, String)>,
}

/// The global flags every podman invocation gets.
pub const GLOBAL_FLAGS: [&str; 4] = ["--cgroup-manager", "cgroupfs", "--runtime", "runc"];

impl Podman {
    /// Writes the configuration into `dir` for a podman that trusts `insecure_registry`
    /// (e.g. `localhost:5000`) over plain HTTP.
    pub fn configure(dir: &Path, insecure_registry: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("tmp"))
            .with_context(|| format!("creating {}", dir.display()))?;
        let driver =
            std::env::var("PUSHDEPLOY_LOCAL_STORAGE_DRIVER").unwrap_or_else(|_| "overlay".into());
        let path = |name: &str| dir.join(name).display().to_string();
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\n\
                 default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 log_driver = \"k8s-file\"\n\
                 [engine]\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 runtime = \"runc\"\n\
                 events_logger = \"file\"\n\
                 events_logfile_path = \"{events}\"\n\
                 tmp_dir = \"{tmp}\"\n\
                 lock_type = \"file\"\n",
                events = path("podman-events.log"),
                tmp = path("tmp"),
            ),
        )?;
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"{driver}\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                path("storage"),
                path("storage-run"),
            ),
        )?;
        std::fs::write(
            dir.join("registries.conf"),
            format!(
                "unqualified-search-registries = []\n\
                 [[registry]]\nlocation = \"{insecure_registry}\"\ninsecure = true\n"
            ),
        )?;
        let env = vec![
            ("CONTAINERS_CONF".to_owned(), path("containers.conf")),
            ("CONTAINERS_STORAGE_CONF".to_owned(), path("storage.conf")),
            (
                "CONTAINERS_REGISTRIES_CONF".to_owned(),
                path("registries.conf"),
            ),
            ("REGISTRY_AUTH_FILE".to_owned(), path("auth.json")),
        ];
        Ok(Self {
            dir: dir.to_path_buf(),
            env,
        })
    }

    /// The environment that selects this podman's storage and configuration.
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    /// A podman command for this storage, not going through any shim.
    pub fn command(&self) -> tokio::process::Command {
        let mut command = std::process::Command::new("podman");
        command.args(GLOBAL_FLAGS);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        crate::run::prepare_child(&mut command, false);
        command.stdin(Stdio::null());
        tokio::process::Command::from(command)
    }

    /// Runs podman and returns its standard output; a failure carries its standard error.
    pub async fn output(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .command()
            .args(args)
            .output()
            .await
            .context("running podman (Debian package podman; run scripts/bootstrap.sh)")?;
        stdout_of(args, out)
    }

    /// Like `output`, feeding `input` on standard input (e.g. a password).
    pub async fn output_with_input(&self, args: &[&str], input: &str) -> anyhow::Result<String> {
        use tokio::io::AsyncWriteExt;
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running podman")?;
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(input.as_bytes()).await?;
        drop(stdin);
        let out = child.wait_with_output().await?;
        stdout_of(args, out)
    }

    /// A shell line that removes every container of this storage (for cleanup and the
    /// reaper of dead runs).
    pub fn cleanup_line(&self) -> String {
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}='{v}'")).collect();
        format!(
            "{} podman {} rm --all --force --time 0 >/dev/null 2>&1",
            env.join(" "),
            GLOBAL_FLAGS.join(" ")
        )
    }

    /// Writes a `docker` command that is this podman: every invocation is appended to `log`
    /// (with `$PUSHDEPLOY_COMMAND_ID`, the Run Command invocation it belongs to), and the
    /// caller's `REGISTRY_AUTH_FILE` is kept when set, so each invocation can start with no
    /// registry credentials at all.
    pub fn write_docker_shim(&self, path: &Path, log: &Path) -> anyhow::Result<()> {
        let mut script = String::from(
            "#!/bin/sh\n\
             # docker, as the local container host provides it: podman (runc, cgroupfs).\n",
        );
        script.push_str(&format!(
            "printf '%s %s docker %s\\n' \"$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)\" \"${{PUSHDEPLOY_COMMAND_ID:--}}\" \"$*\" >> '{}'\n",
            log.display()
        ));
        for (key, value) in &self.env {
            if key == "REGISTRY_AUTH_FILE" {
                script.push_str(&format!(
                    ": \"${{REGISTRY_AUTH_FILE:={value}}}\"\nexport REGISTRY_AUTH_FILE\n"
                ));
            } else {
                script.push_str(&format!("export {key}='{value}'\n"));
            }
        }
        script.push_str(&format!("exec podman {} \"$@\"\n", GLOBAL_FLAGS.join(" ")));
        std::fs::write(path, script)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    }
}

/// The standard output of a podman run that succeeded, or an error quoting its stderr.
fn stdout_of(args: &[&str], out: std::process::Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "podman {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
