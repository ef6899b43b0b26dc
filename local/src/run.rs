//! One run of the local stack: its own directory (configuration, state, one log file per
//! process), the long-lived processes it started, and the cleanup that undoes all of it on
//! exit, Ctrl-C, failure or panic. A run whose owner died without cleaning up (SIGKILL) is
//! reaped by the next run.

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};

/// The prefix of every run directory, under the system's temporary directory.
const PREFIX: &str = "pushdeploy-local-";
/// Marks a run directory kept for its logs (a failed run); the reaper leaves it alone.
const KEPT: &str = "KEPT";
/// Holds the process id of the run's owner.
const OWNER: &str = "owner.pid";
/// Commands that undo what the run left outside its processes (containers), one per line,
/// run by `sh` on cleanup and by the reaper.
const CLEANUP: &str = "cleanup.sh";

/// A process the run started: its own process group, its output in a log file.
struct Started {
    name: String,
    child: Child,
}

pub struct Run {
    pub id: String,
    pub dir: PathBuf,
    started: Mutex<Vec<Started>>,
    spawner: Mutex<Option<mpsc::Sender<SpawnRequest>>>,
    keep: Mutex<bool>,
    cleaned: Mutex<bool>,
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

impl Run {
    /// Creates a fresh run directory (reaping the leftovers of dead runs first).
    pub fn create() -> anyhow::Result<Self> {
        let base = std::env::var_os("PUSHDEPLOY_LOCAL_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        reap_dead_runs(&base);
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let id = format!("{}-{}", std::process::id(), stamp % 100_000_000);
        let dir = base.join(format!("{PREFIX}{id}"));
        fs::create_dir_all(dir.join("logs"))
            .with_context(|| format!("creating {}", dir.display()))?;
        fs::write(dir.join(OWNER), std::process::id().to_string())?;
        fs::write(dir.join(CLEANUP), "")?;
        Ok(Self {
            id,
            dir,
            started: Mutex::new(Vec::new()),
            spawner: Mutex::new(Some(spawner_thread())),
            keep: Mutex::new(false),
            cleaned: Mutex::new(false),
        })
    }

    /// The log file of a process or component of this run.
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// A subdirectory of the run, created.
    pub fn subdir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Starts a long-lived process in its own process group, its output going to
    /// `logs/<name>.log`. It is stopped when the run ends, and killed by the kernel if the
    /// run's owner dies first.
    pub fn spawn(&self, name: &str, mut command: Command) -> anyhow::Result<u32> {
        let log = self.log(name);
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("creating {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        prepare_child(&mut command, true);
        let program = command.get_program().to_string_lossy().into_owned();
        let (tx, rx) = mpsc::channel();
        self.spawner
            .lock()
            .unwrap()
            .as_ref()
            .ok_or_else(|| anyhow!("the run has ended"))?
            .send((command, tx))
            .map_err(|_| anyhow!("the run's spawner thread has stopped"))?;
        let child = rx
            .recv()
            .map_err(|_| anyhow!("the run's spawner thread has stopped"))?
            .with_context(|| format!("starting {program} (see {})", log.display()))?;
        let pid = child.id();
        self.started.lock().unwrap().push(Started {
            name: name.to_owned(),
            child,
        });
        Ok(pid)
    }

    /// Whether the process started under `name` (the newest one) has exited, and how.
    pub fn exited(&self, name: &str) -> Option<std::process::ExitStatus> {
        let mut started = self.started.lock().unwrap();
        let p = started.iter_mut().rev().find(|p| p.name == name)?;
        p.child.try_wait().ok().flatten()
    }

    /// Adds a shell command that cleanup runs (before stopping the processes), and that the
    /// reaper runs for a run whose owner died.
    pub fn on_cleanup(&self, shell: &str) -> anyhow::Result<()> {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join(CLEANUP))?;
        writeln!(f, "{shell}")?;
        Ok(())
    }

    /// Keeps the run directory (its logs) after cleanup, e.g. because the run failed.
    pub fn keep(&self) {
        *self.keep.lock().unwrap() = true;
    }

    pub fn is_kept(&self) -> bool {
        *self.keep.lock().unwrap()
    }

    /// Undoes everything the run started. Runs once; later calls do nothing.
    pub fn cleanup(&self) {
        {
            let mut cleaned = self.cleaned.lock().unwrap();
            if *cleaned {
                return;
            }
            *cleaned = true;
        }
        run_cleanup_script(&self.dir);
        let mut started = std::mem::take(&mut *self.started.lock().unwrap());
        stop_all(&mut started);
        self.spawner.lock().unwrap().take();
        if self.is_kept() || std::thread::panicking() {
            let _ = fs::write(self.dir.join(KEPT), "");
            for heavy in ["host/storage", "builder/storage", "registry/data"] {
                let _ = fs::remove_dir_all(self.dir.join(heavy));
            }
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Long-lived children are started from one dedicated thread: the kernel's "parent death
/// signal" fires when the *thread* that forked a child ends, and runtime worker threads come
/// and go.
fn spawner_thread() -> mpsc::Sender<SpawnRequest> {
    let (tx, rx) = mpsc::channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("pushdeploy-local-spawner".into())
        .spawn(move || {
            for (mut command, reply) in rx {
                let _ = reply.send(command.spawn());
            }
        })
        .expect("starting the spawner thread");
    tx
}

/// Puts a child in its own process group (so it can be stopped with everything it starts,
/// and a terminal's Ctrl-C reaches only the harness, which then stops it in order), unblocks
/// the signals the harness may have blocked, and optionally asks the kernel to terminate it
/// when its parent dies.
pub fn prepare_child(command: &mut Command, die_with_parent: bool) {
    command.process_group(0);
    // SAFETY: only async-signal-safe calls (sigemptyset, pthread_sigmask, prctl) between
    // fork and exec.
    unsafe {
        command.pre_exec(move || {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            if die_with_parent {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            }
            Ok(())
        });
    }
}

/// Sends `signal` to the process group led by `pid`.
pub fn signal_group(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    unsafe {
        libc::kill(-(pid as i32), signal);
    }
}

/// SIGTERM to every group, a grace period, then SIGKILL to what is left.
fn stop_all(started: &mut [Started]) {
    for p in started.iter_mut().rev() {
        if p.child.try_wait().ok().flatten().is_none() {
            signal_group(p.child.id(), libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for p in started.iter_mut() {
        while p.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if p.child.try_wait().ok().flatten().is_none() {
            signal_group(p.child.id(), libc::SIGKILL);
            let _ = p.child.wait();
        } else {
            // Whatever the leader left behind in its group goes too.
            signal_group(p.child.id(), libc::SIGKILL);
        }
    }
}

fn run_cleanup_script(dir: &Path) {
    let script = dir.join(CLEANUP);
    if fs::metadata(&script).map(|m| m.len() > 0).unwrap_or(false) {
        let mut command = Command::new("sh");
        command
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        prepare_child(&mut command, false);
        let _ = command.status();
    }
}

/// Cleans up the runs in `base` whose owner process is gone and that were not kept: their
/// containers (through their cleanup script), then their directory.
fn reap_dead_runs(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_run = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(PREFIX));
        if !is_run || path.join(KEPT).exists() {
            continue;
        }
        let Some(owner) = fs::read_to_string(path.join(OWNER))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        run_cleanup_script(&path);
        let _ = fs::remove_dir_all(&path);
    }
}

/// Waits until something answers on a TCP port of loopback.
pub async fn wait_for_port(port: u16, within: Duration, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("{what} did not listen on port {port} within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
