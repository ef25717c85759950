//! A real, minimal plain-text SMTP server on a loopback port: it stands in for
//! the mail relay so a test can read the mails otpd sent (envelope, body,
//! credentials) and make the relay require auth or refuse recipients.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long `wait_for_messages` waits before declaring the test broken.
const SAFETY_TIMEOUT: Duration = Duration::from_secs(10);

/// One mail as the fake received it.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message after dot-unstuffing, without the final "." line.
    pub data: String,
    /// User and password, if the client authenticated on this connection.
    pub auth: Option<(String, String)>,
}

struct Shared {
    /// Every mail, in arrival order; a watch so waiters wake on each one.
    mails: watch::Sender<Vec<ReceivedMail>>,
    /// The reply to RCPT TO, when recipients are being refused.
    rcpt_rejection: Mutex<Option<String>>,
    connections: AtomicUsize,
    required_credentials: Option<(String, String)>,
}

impl Shared {
    /// Any credentials pass unless specific ones are required.
    fn accepts(&self, given: &(String, String)) -> bool {
        self.required_credentials
            .as_ref()
            .is_none_or(|c| c == given)
    }
}

/// The fake relay; it stops accepting connections when dropped.
pub struct FakeSmtp {
    port: u16,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl FakeSmtp {
    /// A relay that needs no auth (AUTH is still accepted and recorded).
    pub async fn start() -> FakeSmtp {
        Self::launch(None).await
    }

    /// A relay that answers MAIL with 530 until the client authenticated, and
    /// AUTH with 535 for any other credentials.
    pub async fn start_requiring_auth(user: &str, password: &str) -> FakeSmtp {
        Self::launch(Some((user.to_owned(), password.to_owned()))).await
    }

    async fn launch(required_credentials: Option<(String, String)>) -> FakeSmtp {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            mails: watch::Sender::new(Vec::new()),
            rcpt_rejection: Mutex::new(None),
            connections: AtomicUsize::new(0),
            required_credentials,
        });
        let accepting = shared.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepting.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, accepting.clone()));
            }
        });
        FakeSmtp {
            port,
            shared,
            server,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// From now on RCPT TO gets `code text`: 5xx is permanent, 4xx transient.
    pub fn reject_recipients(&self, code: u16, text: &str) {
        *self.shared.rcpt_rejection.lock().unwrap() = Some(format!("{code} {text}"));
    }

    /// From now on RCPT TO gets 250 again.
    pub fn accept_recipients(&self) {
        *self.shared.rcpt_rejection.lock().unwrap() = None;
    }

    /// Every mail received so far, in arrival order.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        self.shared.mails.borrow().clone()
    }

    /// Waits until at least `n` mails arrived; panics after a safety timeout,
    /// listing what did arrive.
    pub async fn wait_for_messages(&self, n: usize) -> Vec<ReceivedMail> {
        let mut arrivals = self.shared.mails.subscribe();
        let waited = tokio::time::timeout(SAFETY_TIMEOUT, arrivals.wait_for(|m| m.len() >= n));
        if waited.await.is_err() {
            let seen: Vec<(String, Vec<String>)> = (self.messages().into_iter())
                .map(|m| (m.mail_from, m.rcpt_to))
                .collect();
            panic!("expected {n} mails within {SAFETY_TIMEOUT:?}, got {seen:?}");
        }
        self.messages()
    }

    /// TCP connections accepted so far: shows whether a pooled client reuses one.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FakeSmtp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// One client connection: lines in, replies out (the reader buffers reads only).
struct Conn(BufReader<TcpStream>);

impl Conn {
    async fn reply(&mut self, text: &str) -> Option<()> {
        let bytes = format!("{text}\r\n").into_bytes();
        self.0.get_mut().write_all(&bytes).await.ok()
    }

    /// The next raw line including its terminator; `None` at end of stream.
    async fn raw_line(&mut self) -> Option<Vec<u8>> {
        let mut line = Vec::new();
        match self.0.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line),
        }
    }

    /// The next line without CRLF (or bare LF).
    async fn line(&mut self) -> Option<String> {
        let raw = self.raw_line().await?;
        let text = String::from_utf8_lossy(&raw);
        Some(text.trim_end_matches(['\r', '\n']).to_owned())
    }
}

/// Runs the SMTP dialogue until QUIT or disconnect; several mails may pass.
async fn serve(stream: TcpStream, shared: Arc<Shared>) -> Option<()> {
    let conn = &mut Conn(BufReader::new(stream));
    let mut auth: Option<(String, String)> = None;
    let mut mail_from: Option<String> = None;
    let mut rcpt_to: Vec<String> = Vec::new();
    conn.reply("220 fake ESMTP").await?;
    loop {
        let line = conn.line().await?;
        let (verb, arg) = line.split_once(' ').unwrap_or((&line, ""));
        let reply = match verb.to_ascii_uppercase().as_str() {
            "EHLO" => "250-fake\r\n250-AUTH PLAIN LOGIN\r\n250-8BITMIME\r\n250 SMTPUTF8".into(),
            "HELO" | "NOOP" => "250 OK".into(),
            "RSET" => {
                (mail_from, rcpt_to) = (None, Vec::new());
                "250 OK".into()
            }
            "QUIT" => return conn.reply("221 bye").await,
            "AUTH" => match authenticate(conn, arg).await? {
                Some(given) if shared.accepts(&given) => {
                    auth = Some(given);
                    "235 2.7.0 Authentication succeeded".into()
                }
                Some(_) => "535 5.7.8 Authentication credentials invalid".into(),
                None => "501 5.5.2 Cannot decode response".into(),
            },
            "MAIL" if auth.is_none() && shared.required_credentials.is_some() => {
                "530 5.7.0 Authentication required".into()
            }
            "MAIL" => {
                (mail_from, rcpt_to) = (Some(angle_address(arg)), Vec::new());
                "250 OK".into()
            }
            "RCPT" if mail_from.is_none() => "503 MAIL first".into(),
            "RCPT" => {
                let rejection = shared.rcpt_rejection.lock().unwrap().clone();
                rejection.unwrap_or_else(|| {
                    rcpt_to.push(angle_address(arg));
                    "250 OK".into()
                })
            }
            "DATA" if rcpt_to.is_empty() => "503 RCPT first".into(),
            "DATA" => {
                conn.reply("354 End data with <CR><LF>.<CR><LF>").await?;
                let mail = ReceivedMail {
                    data: read_data(conn).await?,
                    mail_from: mail_from.take().unwrap_or_default(),
                    rcpt_to: std::mem::take(&mut rcpt_to),
                    auth: auth.clone(),
                };
                shared.mails.send_modify(|all| all.push(mail));
                "250 OK queued".into()
            }
            _ => String::from("502 Command not implemented"),
        };
        conn.reply(&reply).await?;
    }
}

/// Reads the message up to the lone "." line, undoing dot-stuffing.
async fn read_data(conn: &mut Conn) -> Option<String> {
    let mut data = Vec::new();
    loop {
        let line = conn.raw_line().await?;
        let content = line.strip_suffix(b"\n").unwrap_or(&line);
        if content.strip_suffix(b"\r").unwrap_or(content) == b"." {
            return Some(String::from_utf8_lossy(&data).into_owned());
        }
        let unstuffed = usize::from(line.starts_with(b".."));
        data.extend_from_slice(&line[unstuffed..]);
    }
}

/// The SASL exchange for `AUTH <arg>`: outer `None` when the client left,
/// inner `None` when its answer could not be decoded or the mechanism is unknown.
async fn authenticate(conn: &mut Conn, arg: &str) -> Option<Option<(String, String)>> {
    let (mechanism, initial) = arg.split_once(' ').unwrap_or((arg, ""));
    let mut answer = async |challenge: &str, given: &str| -> Option<String> {
        if !given.is_empty() {
            return Some(given.to_owned());
        }
        conn.reply(challenge).await?;
        conn.line().await
    };
    let text = |b64: &str| base64_decode(b64).and_then(|bytes| String::from_utf8(bytes).ok());
    Some(match mechanism.to_ascii_uppercase().as_str() {
        "PLAIN" => {
            // authzid NUL user NUL password
            let decoded = text(&answer("334 ", initial).await?);
            decoded.and_then(|d| {
                let mut fields = d.split('\0').skip(1);
                Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
            })
        }
        "LOGIN" => {
            let user = text(&answer("334 VXNlcm5hbWU6", initial).await?);
            let password = text(&answer("334 UGFzc3dvcmQ6", "").await?);
            user.zip(password)
        }
        _ => None,
    })
}

/// `FROM:<a@b> BODY=8BITMIME` or `TO:<a@b>` -> `a@b` (parameters ignored).
fn angle_address(arg: &str) -> String {
    let after_colon = arg
        .split_once(':')
        .map_or(arg, |(_, rest)| rest)
        .trim_start();
    match after_colon.strip_prefix('<') {
        Some(rest) => rest.split('>').next().unwrap_or_default().to_owned(),
        None => after_colon.split(' ').next().unwrap_or_default().to_owned(),
    }
}

/// Standard base64 (padding optional); `None` on any other character.
fn base64_decode(input: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let value = |c: u8| ALPHABET.iter().position(|&a| a == c).map(|v| v as u32);
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in input.trim().trim_end_matches('=').bytes() {
        buffer = (buffer << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}
