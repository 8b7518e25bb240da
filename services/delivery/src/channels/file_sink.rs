//! The embedded default: messages land as `.eml` files (email) and JSON lines (the other
//! channels, one file per channel) in a folder per tenant, where a person or a test can
//! read them; both carry the message's stamp (customer, campaign, variant, step, coupon,
//! send time in UTC and local time).

use std::path::PathBuf;

use tokio::io::AsyncWriteExt;
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
        let io = |e: std::io::Error| Failure::Transient {
            reason: format!("file sink {}: {e}", self.dir.display()),
            retry_after_ms: None,
        };
        tokio::fs::create_dir_all(&self.dir).await.map_err(io)?;
        let msg = m.message;
        if msg.channel == Channel::Email as i32 {
            let email = super::smtp::build_email("winback@localhost", m).map_err(|reason| {
                Failure::Permanent {
                    reason,
                    suppress: false,
                }
            })?;
            let path = self.dir.join(format!("{}.eml", msg.message_id));
            tokio::fs::write(&path, email.formatted())
                .await
                .map_err(io)?;
        } else {
            let stamp = super::stamp::Stamp::of(m);
            let mut line = stamp.json();
            line.insert("message_id".into(), msg.message_id.clone().into());
            line.insert("contact".into(), msg.contact.clone().into());
            line.insert("text".into(), msg.body_text.clone().into());
            line.insert("json".into(), msg.body_json.clone().into());
            let line = serde_json::Value::Object(line);
            let channel = stamp.channel;
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(format!("{channel}.jsonl")))
                .await
                .map_err(io)?;
            file.write_all(format!("{line}\n").as_bytes())
                .await
                .map_err(io)?;
        }
        Ok(format!("file:{}", msg.message_id))
    }
}
