//! The zero-set-up provider: prints each message as one line, so a newcomer can see the
//! code without configuring anything.

use std::io::Write;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{DeliveryJob, Provider, ProviderError, Receipt};
use crate::domain::message::MessageContent;

/// Where console messages go: stdout, or a buffer a test reads back.
#[derive(Clone)]
pub struct ConsoleOut(Arc<Mutex<Box<dyn Write + Send>>>);

impl ConsoleOut {
    pub fn stdout() -> Self {
        Self::to(std::io::stdout())
    }

    pub fn to(w: impl Write + Send + 'static) -> Self {
        ConsoleOut(Arc::new(Mutex::new(Box::new(w))))
    }
}

pub struct ConsoleProvider {
    out: ConsoleOut,
}

impl ConsoleProvider {
    pub fn new(out: ConsoleOut) -> Self {
        ConsoleProvider { out }
    }
}

/// Escapes line breaks so that one message is always one line.
fn one_line(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\r', "\\r")
        .replace('\n', "\\n")
}

#[async_trait]
impl Provider for ConsoleProvider {
    fn name(&self) -> &'static str {
        "console"
    }

    async fn send(&self, job: &DeliveryJob) -> Result<Receipt, ProviderError> {
        let body = match &job.content {
            MessageContent::Text { text } => one_line(text),
            MessageContent::Email {
                subject,
                text,
                html,
            } => {
                let mut line = format!("subject={:?} text={:?}", one_line(subject), one_line(text));
                if let Some(html) = html {
                    line.push_str(&format!(" html={:?}", one_line(html)));
                }
                line
            }
        };
        let line = format!(
            "otpd console: {} to {}: {}\n",
            job.channel, job.target, body
        );
        let mut out = self
            .out
            .0
            .lock()
            .map_err(|_| ProviderError::Retryable("console output is poisoned".into()))?;
        out.write_all(line.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| ProviderError::Retryable(format!("console write failed: {e}")))?;
        Ok(Receipt::default())
    }
}
