//! The embedded default: messages land as `.eml` files (email) and JSON lines (the other
//! channels, one file per channel) in a folder per tenant, where a person or a test can
//! read them; both carry the message's stamp (customer, campaign, variant, step, coupon,
//! send time in UTC and local time).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use winback_proto::common::Channel;

use super::{Carrier, Failure, Outgoing};

#[derive(Debug)]
pub(crate) struct FileSink {
    dir: PathBuf,
}

impl FileSink {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
}

impl Carrier for FileSink {
    async fn send(&self, m: &Outgoing<'_>) -> Result<String, Failure> {
        let msg = m.message;
        // The message is rendered here; the file work (folder, write or append) is one hop
        // to the blocking pool, not one per call (tokio::fs hops for each operation, and a
        // demo sends a hundred thousand messages).
        let (file, bytes, append) = if msg.channel == Channel::Email as i32 {
            let email = super::smtp::build_email("winback@localhost", m).map_err(|reason| {
                Failure::Permanent {
                    reason,
                    suppress: false,
                }
            })?;
            (format!("{}.eml", msg.message_id), email.formatted(), false)
        } else {
            let stamp = super::stamp::Stamp::of(m);
            let mut line = stamp.json();
            line.insert("message_id".into(), msg.message_id.clone().into());
            line.insert("contact".into(), msg.contact.clone().into());
            line.insert("text".into(), msg.body_text.clone().into());
            line.insert("json".into(), msg.body_json.clone().into());
            let line = serde_json::Value::Object(line);
            (
                format!("{}.jsonl", stamp.channel),
                format!("{line}\n").into_bytes(),
                true,
            )
        };
        let dir = self.dir.clone();
        let written = tokio::task::spawn_blocking(move || write_file(&dir, &file, &bytes, append))
            .await
            .unwrap_or_else(|joined| Err(std::io::Error::other(joined)));
        written.map_err(|e| Failure::Transient {
            reason: format!("file sink {}: {e}", self.dir.display()),
            retry_after_ms: None,
        })?;
        Ok(format!("file:{}", msg.message_id))
    }
}

/// Writes a whole file, or appends one line to it (one `write` call, so lines of
/// concurrent sends do not interleave), creating the folder on first use.
fn write_file(dir: &Path, name: &str, bytes: &[u8], append: bool) -> std::io::Result<()> {
    let path = dir.join(name);
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&path)
    };
    let mut file = match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir)?;
            open()?
        }
        other => other?,
    };
    file.write_all(bytes)
}
