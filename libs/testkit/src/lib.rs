//! Real stand-ins the tests send to, shared by delivery's tests and the end-to-end suite:
//! an SMTP server (aiosmtpd, `smtp_sink.py`) that stores every message it accepts, and one
//! HTTP server speaking Twilio's, SMS.ru's, FCM's and a signed webhook's request and reply
//! shapes. Test support: panics on set-up failures are the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

pub mod providers;

use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub use providers::Providers;

/// A running aiosmtpd that stores what it accepts.
#[derive(Debug)]
pub struct SmtpSink {
    pub port: u16,
    pub dir: PathBuf,
    /// Killed when the sink is dropped.
    _child: Child,
}

impl SmtpSink {
    /// Starts the sink. Needs `python3`; installs `aiosmtpd` from PyPI on first use.
    pub async fn start(dir: PathBuf) -> Self {
        ensure_aiosmtpd();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/smtp_sink.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 with aiosmtpd is needed for the SMTP tests (pip install aiosmtpd)");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).await.unwrap();
        let port = line
            .trim()
            .parse()
            .expect("aiosmtpd did not start (pip install aiosmtpd)");
        Self {
            port,
            dir,
            _child: child,
        }
    }

    /// The stored messages, oldest first, with quoted-printable soft line breaks and `=3D`
    /// undone so assertions can look for whole URLs.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<_> = std::fs::read_dir(&self.dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| p.extension().is_some_and(|e| e == "eml"));
        files.sort();
        files
            .iter()
            .map(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .replace("=\r\n", "")
                    .replace("=\n", "")
                    .replace("=3D", "=")
            })
            .collect()
    }
}

fn has_aiosmtpd() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs aiosmtpd once per machine; test processes run in parallel, so one installs
/// (holding a lock file) while the others wait for it.
fn ensure_aiosmtpd() {
    if has_aiosmtpd() {
        return;
    }
    let lock = std::env::temp_dir().join("winback-aiosmtpd-install.lock");
    for _ in 0..600 {
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
            .is_ok()
        {
            eprintln!("*** installing aiosmtpd (pip) for the SMTP tests ***");
            let installed = std::process::Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "aiosmtpd"])
                .status();
            let _ = std::fs::remove_file(&lock);
            assert!(
                installed.is_ok_and(|s| s.success()),
                "could not install aiosmtpd: run `python3 -m pip install aiosmtpd`"
            );
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        if has_aiosmtpd() {
            return;
        }
    }
    panic!("waited two minutes for another test to install aiosmtpd");
}

/// A port nobody listens on right now (for servers that bind their own address).
pub fn free_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A header's value with folded lines joined.
pub fn header_value(email: &str, name: &str) -> String {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    let mut lines = email.lines();
    let mut value = String::new();
    while let Some(line) = lines.next() {
        if line.to_ascii_lowercase().starts_with(&prefix) {
            value.push_str(line[prefix.len()..].trim());
            for more in lines.by_ref() {
                if more.starts_with(' ') || more.starts_with('\t') {
                    value.push(' ');
                    value.push_str(more.trim());
                } else {
                    break;
                }
            }
            return value;
        }
    }
    value
}

/// The first quoted attribute value that starts with `prefix`.
pub fn link_starting(email: &str, prefix: &str) -> String {
    let at = email
        .find(prefix)
        .unwrap_or_else(|| panic!("no link {prefix} in {email}"));
    email[at..]
        .split(['"', '>', '\r', '\n'])
        .next()
        .unwrap()
        .to_owned()
}
