//! Typed configuration, read once from the environment (and `.env` when
//! present). A missing or invalid value stops start-up with one line that
//! names the variable.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use std::env;
use std::fmt;
use std::net::SocketAddr;

use crate::secret::Secret;

#[derive(Debug)]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "configuration error: {} {}", self.variable, self.problem)
    }
}

impl std::error::Error for ConfigError {}

fn err(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError { variable, problem: problem.into() }
}

fn var(name: &'static str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn required(name: &'static str) -> Result<String, ConfigError> {
    var(name).ok_or_else(|| err(name, "is not set"))
}

/// What every subcommand that touches the database needs.
#[derive(Debug, Clone)]
pub struct DbConfig {
    pub database_url: Secret<String>,
    pub pool_size: u32,
}

impl DbConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let url = required("DATABASE_URL")?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(err("DATABASE_URL", "must be a postgres:// URL"));
        }
        let pool_size = match var("SWITCHBOARD_DB_POOL_SIZE") {
            None => 10,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=200).contains(n))
                .ok_or_else(|| err("SWITCHBOARD_DB_POOL_SIZE", "must be a number from 1 to 200"))?,
        };
        Ok(DbConfig { database_url: Secret::new(url), pool_size })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signup {
    Open,
    Closed,
}

/// One AEAD key of `SWITCHBOARD_ENCRYPTION_KEYS`.
#[derive(Clone)]
pub struct EncryptionKey {
    pub id: String,
    pub key: Secret<[u8; 32]>,
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionKey({}, [redacted])", self.id)
    }
}

/// Parses `id:base64key[,id:base64key…]`; keys are 32 bytes, ids unique.
pub fn parse_encryption_keys(raw: &str) -> Result<Vec<EncryptionKey>, String> {
    let mut keys: Vec<EncryptionKey> = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, b64) = part.split_once(':').ok_or("entries must look like id:base64key")?;
        if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(format!("key id {id:?} must be 1-32 letters, digits, '-' or '_'"));
        }
        let bytes = STANDARD.decode(b64).map_err(|_| format!("key {id:?} is not valid base64"))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| format!("key {id:?} must decode to 32 bytes"))?;
        if keys.iter().any(|k| k.id == id) {
            return Err(format!("key id {id:?} appears twice"));
        }
        keys.push(EncryptionKey { id: id.to_string(), key: Secret::new(key) });
    }
    if keys.is_empty() {
        return Err("holds no key".into());
    }
    Ok(keys)
}

/// Where the server sends its mail (`mail`): off unless
/// `SWITCHBOARD_SMTP_URL` is set.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// `smtps://user:password@host[:465]` (TLS), or
    /// `smtp://user:password@host:587?tls=required` (STARTTLS);
    /// `smtp://host:port` alone is unencrypted, for a relay on the same
    /// machine or network; `print` prints mail instead (development).
    pub smtp_url: Secret<String>,
    /// `From:`, `Name <address>` or an address.
    pub from: String,
    /// `SWITCHBOARD_CONVERSATION_URL`: where the operator's inbox app
    /// shows a conversation, with `{tenant}` (its slug) and
    /// `{conversation_id}`; notice mails link there (`inbox::notice_mail`).
    pub conversation_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MetaConfig {
    pub app_id: String,
    pub app_secret: Secret<String>,
    pub verify_token: Secret<String>,
    pub graph_url: String,
    pub graph_version: String,
    pub dialog_url: String,
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub db: DbConfig,
    pub bind: SocketAddr,
    pub public_url: String,
    pub jwt_secret: Secret<Vec<u8>>,
    pub encryption_keys: Vec<EncryptionKey>,
    pub signup: Signup,
    pub operator_token: Option<Secret<String>>,
    pub meta: MetaConfig,
    pub json_logs: bool,
    /// Browser origins (`scheme://host[:port]`) allowed besides the public
    /// URL's own: to open sockets and to call the API across origins.
    pub allowed_origins: Vec<String>,
    /// The most sockets one member may have open on an instance at once
    /// (`SWITCHBOARD_WS_MAX_PER_MEMBER`; none by default). A person's tabs,
    /// phone and desktop app are a handful; a client that leaks sockets,
    /// or a token's holder opening thousands, costs ~20 KiB and a fan-out
    /// delivery each. Off by default so that load tests and integrations
    /// that open many sockets on one login are not refused.
    pub ws_max_per_member: Option<usize>,
    /// Whether integrators' webhooks may target private, loopback and
    /// link-local addresses (`SWITCHBOARD_WEBHOOKS_PRIVATE_OK`; no by
    /// default: a tenant's admin must not reach the servers beside ours).
    pub webhooks_private_ok: bool,
    /// Mail for invitations and password resets; `None`: none is sent.
    pub mail: Option<MailConfig>,
    /// How long an idle connection is kept (`SWITCHBOARD_KEEP_ALIVE_SECS`,
    /// [`crate::http::KEEP_ALIVE`] by default; zero turns keep-alive off).
    pub keep_alive: std::time::Duration,
}

/// Mail from `SWITCHBOARD_SMTP_URL` and `SWITCHBOARD_MAIL_FROM`; the sender
/// is `no-reply@` the public URL's host unless named.
fn mail_config(
    url: Option<String>,
    from: Option<String>,
    conversation_url: Option<String>,
    public_url: &str,
) -> Result<Option<MailConfig>, ConfigError> {
    // Checked with mail off too: a typo shows when it is set, not the day
    // mail is turned on.
    let conversation_url = conversation_url.map(|u| u.trim().to_string()).filter(|u| !u.is_empty());
    if let Some(u) = &conversation_url {
        let bare = u.replace("{tenant}", "t").replace("{conversation_id}", "1");
        let web = bare.starts_with("https://") || bare.starts_with("http://");
        if !(web && u.contains("{conversation_id}") && reqwest::Url::parse(&bare).is_ok()) {
            return Err(err(
                "SWITCHBOARD_CONVERSATION_URL",
                "must be an http(s) URL holding {conversation_id} (and, if it needs it, {tenant})",
            ));
        }
    }
    let Some(url) = url else { return Ok(None) };
    let smtp = ["smtp://", "smtps://"].iter().any(|s| url.starts_with(s))
        && lettre::transport::smtp::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(&url).is_ok();
    if !(smtp || url == crate::mail::PRINT) {
        return Err(err("SWITCHBOARD_SMTP_URL", "must be an smtp:// or smtps:// URL, or print"));
    }
    let host = reqwest::Url::parse(public_url).ok().and_then(|u| u.host_str().map(str::to_string));
    let from = from.unwrap_or_else(|| format!("Switchboard <no-reply@{}>", host.as_deref().unwrap_or("localhost")));
    if from.parse::<lettre::message::Mailbox>().is_err() {
        return Err(err("SWITCHBOARD_MAIL_FROM", "must be an address, or Name <address>"));
    }
    Ok(Some(MailConfig { smtp_url: Secret::new(url), from, conversation_url }))
}

/// The mail settings `serve` reads (`None`: mail off); `public_url` gives
/// the default sender's host.
pub fn mail_from_env(public_url: &str) -> Result<Option<MailConfig>, ConfigError> {
    mail_config(
        var("SWITCHBOARD_SMTP_URL"),
        var("SWITCHBOARD_MAIL_FROM"),
        var("SWITCHBOARD_CONVERSATION_URL"),
        public_url,
    )
}

/// `SWITCHBOARD_PUBLIC_URL` as `serve` reads it.
pub fn public_url_from_env() -> Result<String, ConfigError> {
    let bind = var("SWITCHBOARD_BIND").unwrap_or_else(|| "127.0.0.1:8080".into());
    url_var("SWITCHBOARD_PUBLIC_URL", &format!("http://{bind}"))
}

fn url_var(name: &'static str, default: &str) -> Result<String, ConfigError> {
    let v = var(name).unwrap_or_else(|| default.to_string());
    if !(v.starts_with("http://") || v.starts_with("https://")) {
        return Err(err(name, "must start with http:// or https://"));
    }
    Ok(v.trim_end_matches('/').to_string())
}

/// `scheme://host[:port]` of an http(s) URL, as browsers send it in
/// `Origin` (default ports left out, host in lower case).
fn origin_of(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    let origin = url.origin();
    (origin.is_tuple() && matches!(url.scheme(), "http" | "https")).then(|| origin.ascii_serialization())
}

/// `SWITCHBOARD_ALLOWED_ORIGINS`: a comma-separated list of origins (a
/// path, query or credentials would never match a browser's `Origin`).
pub fn parse_origins(raw: &str) -> Result<Vec<String>, String> {
    raw.split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| {
            let bare = reqwest::Url::parse(o).is_ok_and(|u| {
                u.path() == "/" && u.query().is_none() && u.fragment().is_none() && u.username().is_empty()
            });
            origin_of(o).filter(|_| bare).ok_or_else(|| format!("{o:?} is not an origin like https://app.example.com"))
        })
        .collect()
}

impl ServerConfig {
    /// Whether a browser at `origin` may open a socket or read the API's
    /// answers: the public URL's own origin, or one allowed.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/');
        origin_of(&self.public_url).is_some_and(|o| o == origin) || self.allowed_origins.iter().any(|o| o == origin)
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        let db = DbConfig::from_env()?;
        let bind: SocketAddr = var("SWITCHBOARD_BIND")
            .unwrap_or_else(|| "127.0.0.1:8080".into())
            .parse()
            .map_err(|_| err("SWITCHBOARD_BIND", "must be an address like 127.0.0.1:8080"))?;
        let public_url = url_var("SWITCHBOARD_PUBLIC_URL", &format!("http://{bind}"))?;
        let jwt_secret = required("SWITCHBOARD_JWT_SECRET")?;
        if jwt_secret.len() < 32 {
            return Err(err("SWITCHBOARD_JWT_SECRET", "must be at least 32 bytes"));
        }
        let encryption_keys = parse_encryption_keys(&required("SWITCHBOARD_ENCRYPTION_KEYS")?)
            .map_err(|p| err("SWITCHBOARD_ENCRYPTION_KEYS", p))?;
        let signup = match var("SWITCHBOARD_SIGNUP").as_deref() {
            None | Some("closed") => Signup::Closed,
            Some("open") => Signup::Open,
            Some(_) => return Err(err("SWITCHBOARD_SIGNUP", "must be open or closed")),
        };
        let operator_token = var("SWITCHBOARD_OPERATOR_TOKEN").map(Secret::new);
        if let Some(t) = &operator_token {
            if t.expose().len() < 16 {
                return Err(err("SWITCHBOARD_OPERATOR_TOKEN", "must be at least 16 characters"));
            }
        }
        let app_id = required("META_APP_ID")?;
        let app_secret = Secret::new(required("META_APP_SECRET")?);
        let verify_token = Secret::new(required("META_VERIFY_TOKEN")?);
        let graph_version = var("META_GRAPH_VERSION").unwrap_or_else(|| "v24.0".into());
        if !graph_version.starts_with('v') || graph_version[1..].parse::<f32>().is_err() {
            return Err(err("META_GRAPH_VERSION", "must look like v24.0"));
        }
        let meta = MetaConfig {
            app_id,
            app_secret,
            verify_token,
            graph_url: url_var("META_GRAPH_URL", "https://graph.facebook.com")?,
            graph_version,
            dialog_url: url_var("META_DIALOG_URL", "https://www.facebook.com")?,
        };
        let json_logs = match var("SWITCHBOARD_LOG_FORMAT").as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(_) => return Err(err("SWITCHBOARD_LOG_FORMAT", "must be text or json")),
        };
        let allowed_origins = parse_origins(&var("SWITCHBOARD_ALLOWED_ORIGINS").unwrap_or_default())
            .map_err(|p| err("SWITCHBOARD_ALLOWED_ORIGINS", p))?;
        let ws_max_per_member = match var("SWITCHBOARD_WS_MAX_PER_MEMBER") {
            None => None,
            Some(v) => match v.trim().parse::<usize>() {
                Ok(0) => None,
                Ok(n) => Some(n),
                Err(_) => return Err(err("SWITCHBOARD_WS_MAX_PER_MEMBER", "must be a number (0 for no limit)")),
            },
        };
        let webhooks_private_ok = match var("SWITCHBOARD_WEBHOOKS_PRIVATE_OK").as_deref() {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(_) => return Err(err("SWITCHBOARD_WEBHOOKS_PRIVATE_OK", "must be true or false")),
        };
        let mail = mail_from_env(&public_url)?;
        let keep_alive = parse_keep_alive(var("SWITCHBOARD_KEEP_ALIVE_SECS").as_deref())
            .map_err(|p| err("SWITCHBOARD_KEEP_ALIVE_SECS", p))?;
        Ok(ServerConfig {
            db,
            bind,
            public_url,
            jwt_secret: Secret::new(jwt_secret.into_bytes()),
            encryption_keys,
            signup,
            operator_token,
            meta,
            json_logs,
            allowed_origins,
            ws_max_per_member,
            webhooks_private_ok,
            mail,
            keep_alive,
        })
    }
}

/// `SWITCHBOARD_KEEP_ALIVE_SECS`: whole seconds, 0 for none; at most two
/// hours (AWS's load balancer's idle timeout goes to 4,000 s, and the
/// server's must be longer still).
fn parse_keep_alive(v: Option<&str>) -> Result<std::time::Duration, String> {
    let Some(v) = v else { return Ok(crate::http::KEEP_ALIVE) };
    match v.trim().parse::<u64>() {
        Ok(secs) if secs <= 7200 => Ok(std::time::Duration::from_secs(secs)),
        _ => Err("must be a number of seconds from 0 (no keep-alive) to 7200".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_keys() {
        let k = STANDARD.encode([7u8; 32]);
        let keys = parse_encryption_keys(&format!("k2:{k}, k1:{k}")).expect("valid");
        assert_eq!(keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), ["k2", "k1"]);
        assert!(!format!("{keys:?}").contains(&k));
        for bad in ["", "k1", "k1:!!", &format!("k1:{}", STANDARD.encode([1u8; 16])), &format!("k1:{k},k1:{k}")] {
            assert!(parse_encryption_keys(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mail() {
        let public = "https://inbox.example.com";
        let s = |v: &str| Some(v.to_string());
        assert!(mail_config(None, s("x@y.z"), None, public).expect("off").is_none());
        let on = mail_config(s("smtps://u:p@smtp.example.com"), None, None, public).expect("valid").expect("on");
        assert_eq!(on.from, "Switchboard <no-reply@inbox.example.com>");
        assert!(!format!("{on:?}").contains("u:p"), "the URL's password is not printed");
        for url in ["smtp://127.0.0.1:2525", "smtp://u:p@smtp.example.com:587?tls=required", "print"] {
            assert!(mail_config(s(url), s("Ops <ops@example.com>"), None, public).is_ok(), "{url}");
        }
        for url in ["", "smtp.example.com", "http://smtp.example.com", "smtp://", "printer"] {
            assert!(mail_config(s(url), None, None, public).is_err(), "{url}");
        }
        assert!(mail_config(s("print"), s("not an address"), None, public).is_err());
        // Where notice mails link to.
        let smtp = s("smtp://127.0.0.1:2525");
        let with = |u: &str| mail_config(smtp.clone(), None, s(u), public);
        let on = with("https://app.example.com/{tenant}/conversations/{conversation_id}").expect("valid").expect("on");
        assert!(on.conversation_url.is_some());
        assert!(with("  ").expect("blank is none").expect("on").conversation_url.is_none());
        for bad in ["https://app.example.com/conversations", "ftp://x/{conversation_id}", "/c/{conversation_id}"] {
            assert!(with(bad).is_err(), "{bad}");
            assert!(mail_config(None, None, s(bad), public).is_err(), "{bad}, mail off");
        }
    }

    #[test]
    fn keep_alive() {
        assert_eq!(parse_keep_alive(None), Ok(crate::http::KEEP_ALIVE));
        assert_eq!(parse_keep_alive(Some(" 620 ")), Ok(std::time::Duration::from_secs(620)));
        assert_eq!(parse_keep_alive(Some("0")), Ok(std::time::Duration::ZERO));
        for bad in ["-1", "75s", "1.5", "7201", "ninety"] {
            assert!(parse_keep_alive(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn allowed_origins() {
        assert_eq!(
            parse_origins(" https://App.Example.com, http://localhost:5173/ ,https://x.example:443").expect("valid"),
            ["https://app.example.com", "http://localhost:5173", "https://x.example"]
        );
        assert_eq!(parse_origins("").expect("none"), Vec::<String>::new());
        for bad in ["app.example.com", "https://app.example.com/inbox", "ftp://x.example", "https://u:p@x.example", "*"]
        {
            assert!(parse_origins(bad).is_err(), "{bad}");
        }
    }
}
