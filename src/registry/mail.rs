//! Mailing registration tokens: SMTP through `lettre`, or an mbox file.
//!
//! `--mailhost` is either `host[:port]` (SMTP, port 25 by default, STARTTLS
//! with `--smtp-starttls`, login with `--smtp-user`/`--smtp-pwd`) or the path
//! of an mbox file (anything containing a `/`), to which each message is
//! appended — handy for tests and for registries without a mail relay.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};

/// Errors while sending a token.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The recipient or sender is not a valid address.
    #[error("invalid email address {0:?}")]
    Address(String),
    /// Building the message failed.
    #[error("cannot build the message: {0}")]
    Build(String),
    /// The SMTP server refused or could not be reached.
    #[error("smtp: {0}")]
    Smtp(String),
    /// The mbox file could not be written.
    #[error("mbox {0}: {1}")]
    Mbox(PathBuf, std::io::Error),
}

/// Where tokens go.
pub enum Mailer {
    /// Append to this mbox file.
    Mbox(PathBuf),
    /// Send through this SMTP relay.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

/// SMTP settings from the command line.
#[derive(Clone, Debug, Default)]
pub struct SmtpOptions {
    /// `host[:port]` or an mbox path.
    pub mailhost: String,
    /// Login.
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Use STARTTLS.
    pub starttls: bool,
}

impl Mailer {
    /// Builds the mailer `--mailhost` describes.
    pub fn new(opts: &SmtpOptions) -> Result<Self, MailError> {
        if opts.mailhost.contains('/') {
            return Ok(Self::Mbox(PathBuf::from(&opts.mailhost)));
        }
        let (host, port) = match opts.mailhost.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse()
                    .map_err(|_| MailError::Smtp(format!("bad port in {:?}", opts.mailhost)))?,
            ),
            _ => (opts.mailhost.as_str(), 25),
        };
        let builder = if opts.starttls {
            AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .map_err(|e| MailError::Smtp(e.to_string()))?
        } else {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        };
        let mut builder = builder.port(port);
        if let (Some(u), Some(p)) = (&opts.user, &opts.password) {
            builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
        }
        Ok(Self::Smtp(builder.build()))
    }

    /// Sends `token` to `to` from `from`.
    pub async fn send_token(
        &self,
        from: &str,
        to: &str,
        token: &str,
        network: &str,
    ) -> Result<(), MailError> {
        let to_box: Mailbox = to.parse().map_err(|_| MailError::Address(to.into()))?;
        let from_box: Mailbox = from.parse().map_err(|_| MailError::Address(from.into()))?;
        let body = format!(
            "Hello,\n\nYour registration token for the re6st network {network} is:\n\n    {token}\n\n\
             Enroll your node with:\n\n    re6st conf --registry <URL> --token {token}\n\n\
             The token can be used once.\n"
        );
        let msg = Message::builder()
            .from(from_box)
            .to(to_box)
            .subject(format!("re6st registration token for {network}"))
            .body(body)
            .map_err(|e| MailError::Build(e.to_string()))?;
        match self {
            Self::Smtp(t) => t
                .send(msg)
                .await
                .map(|_| ())
                .map_err(|e| MailError::Smtp(e.to_string())),
            Self::Mbox(path) => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let entry = mbox_entry(from, now, &msg.formatted());
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .and_then(|mut f| f.write_all(&entry))
                        .map_err(|e| MailError::Mbox(path, e))
                })
                .await
                .map_err(|e| MailError::Build(e.to_string()))?
            }
        }
    }
}

/// One mbox (mboxrd) entry: the `From ` separator line, the message with
/// LF line ends and `From ` lines quoted, and a blank line.
pub fn mbox_entry(from: &str, unix: u64, message: &[u8]) -> Vec<u8> {
    let sender = from
        .rsplit_once('<')
        .map_or(from, |(_, a)| a.trim_end_matches('>'))
        .trim();
    let mut out = format!("From {} {}\n", sender, asctime(unix)).into_bytes();
    let text = String::from_utf8_lossy(message).replace("\r\n", "\n");
    for line in text.lines() {
        let bare = line.trim_start_matches('>');
        if bare.starts_with("From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// `Mon Nov 23 22:18:41 2026` for a Unix time (UTC).
pub fn asctime(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix / 86400;
    let secs = unix % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{} {} {:2} {:02}:{:02}:{:02} {}",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        day,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        year
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asctime_vectors() {
        assert_eq!(asctime(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(asctime(951_782_400), "Tue Feb 29 00:00:00 2000");
        assert_eq!(asctime(1_795_472_321), "Mon Nov 23 22:18:41 2026");
    }

    #[test]
    fn mbox_quoting() {
        let e = mbox_entry(
            "re6st <r@example.org>",
            0,
            b"Subject: x\r\n\r\nFrom here\r\n>From there\r\nok\r\n",
        );
        assert_eq!(
            String::from_utf8(e).unwrap(),
            "From r@example.org Thu Jan  1 00:00:00 1970\nSubject: x\n\n>From here\n>>From there\nok\n\n"
        );
    }

    #[tokio::test]
    async fn mbox_receives_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mbox");
        let m = Mailer::new(&SmtpOptions {
            mailhost: path.display().to_string(),
            ..Default::default()
        })
        .unwrap();
        m.send_token(
            "re6st@localhost",
            "a@example.org",
            "tok123",
            "2001:db8::/32",
        )
        .await
        .unwrap();
        m.send_token(
            "re6st@localhost",
            "b@example.org",
            "tok456",
            "2001:db8::/32",
        )
        .await
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("\nFrom re6st@localhost ").count() + 1, 2);
        assert!(text.contains("To: a@example.org") && text.contains("tok123"));
        assert!(text.contains("tok456"));
        assert!(matches!(
            m.send_token("re6st@localhost", "not an address", "t", "n")
                .await,
            Err(MailError::Address(_))
        ));
    }

    /// A minimal SMTP server on loopback that accepts one message and
    /// returns its DATA.
    async fn fake_smtp(listener: tokio::net::TcpListener) -> String {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
        let (sock, _) = listener.accept().await.unwrap();
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"220 fake ESMTP\r\n").await.unwrap();
        let mut data = String::new();
        let mut in_data = false;
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await.unwrap() == 0 {
                break;
            }
            if in_data {
                if line == ".\r\n" {
                    in_data = false;
                    w.write_all(b"250 queued\r\n").await.unwrap();
                } else {
                    data.push_str(&line);
                }
                continue;
            }
            let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
            let reply: &[u8] = match verb.as_str() {
                "EHLO" => b"250 fake\r\n",
                "DATA" => {
                    in_data = true;
                    b"354 go\r\n"
                }
                "QUIT" => {
                    w.write_all(b"221 bye\r\n").await.unwrap();
                    break;
                }
                _ => b"250 ok\r\n",
            };
            w.write_all(reply).await.unwrap();
        }
        data
    }

    #[tokio::test]
    async fn smtp_delivers_token() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(fake_smtp(listener));
        let m = Mailer::new(&SmtpOptions {
            mailhost: format!("127.0.0.1:{port}"),
            ..Default::default()
        })
        .unwrap();
        m.send_token(
            "re6st@localhost",
            "a@example.org",
            "tok789",
            "2001:db8::/32",
        )
        .await
        .unwrap();
        drop(m);
        let data = tokio::time::timeout(std::time::Duration::from_secs(30), server)
            .await
            .unwrap()
            .unwrap();
        assert!(data.contains("To: a@example.org"), "{data}");
        assert!(data.contains("tok789"), "{data}");
    }
}
