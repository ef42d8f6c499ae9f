//! Test support: a real PostgreSQL, a fresh database per test (dropped on
//! `Drop`, leftovers of dead runs swept), and `spawn_app()` starting the real
//! server on port 0.
//!
//! PostgreSQL is found at `SWITCHBOARD_TEST_ADMIN_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). When nothing answers there
//! and the PostgreSQL binaries (`initdb`, `pg_ctl`) are installed, a throwaway
//! cluster is started in a temporary folder and removed when the tests end.
#![allow(dead_code)]

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use switchboard::config::{DbConfig, EncryptionKey, MetaConfig, ServerConfig, Signup};
use switchboard::db::migrate::run_public_migrations;
use switchboard::db::{connect_pool, Db, PgPool, PoolOptions};
use switchboard::secret::Secret;

pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef-0123";
pub const OPERATOR_TOKEN: &str = "operator-token-0123456789";
/// A browser origin other than the server's own that may call it.
pub const ALLOWED_ORIGIN: &str = "https://inbox.example";

static ADMIN_URL: OnceLock<String> = OnceLock::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);
static CLUSTER_DIR: OnceLock<PathBuf> = OnceLock::new();

fn with_db(admin_url: &str, db: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b.to_string(), format!("?{q}")),
        None => (admin_url.to_string(), String::new()),
    };
    let (root, _) = base.rsplit_once('/').expect("admin URL names a database");
    format!("{root}/{db}{query}")
}

fn find_pg_bin(name: &str) -> Option<PathBuf> {
    if let Ok(out) = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output() {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !p.is_empty() {
            return Some(PathBuf::from(p));
        }
    }
    let mut dirs: Vec<_> = std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path()).collect();
    dirs.sort();
    dirs.into_iter().rev().map(|d| d.join("bin").join(name)).find(|p| p.exists())
}

extern "C" fn stop_cluster() {
    if let Some(dir) = CLUSTER_DIR.get() {
        if let Some(pg_ctl) = find_pg_bin("pg_ctl") {
            let data = dir.join("data");
            let _ = as_pg_user(&pg_ctl, &["-D", &data.to_string_lossy(), "-m", "immediate", "stop"]).output();
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn as_pg_user(bin: &PathBuf, args: &[&str]) -> Command {
    // initdb refuses to run as root: run the cluster as `postgres` then.
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(bin).args(args);
        c
    } else {
        let mut c = Command::new(bin);
        c.args(args);
        c
    }
}

fn start_throwaway_cluster() -> String {
    let initdb = find_pg_bin("initdb").expect(
        "no PostgreSQL answers at SWITCHBOARD_TEST_ADMIN_URL and initdb is not installed: \
         install PostgreSQL (Debian: apt-get install postgresql) or point SWITCHBOARD_TEST_ADMIN_URL at a server",
    );
    let pg_ctl = find_pg_bin("pg_ctl").expect("pg_ctl not found next to initdb");
    let dir = std::env::temp_dir().join(format!("switchboard-test-pg-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    if unsafe { libc::geteuid() } == 0 {
        let _ = Command::new("chown").arg("postgres:postgres").arg(&dir).status();
    }
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port");
    let data = dir.join("data");
    let st = as_pg_user(&initdb, &["-D", &data.to_string_lossy(), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
        .output()
        .expect("initdb runs");
    assert!(st.status.success(), "initdb failed: {}", String::from_utf8_lossy(&st.stderr));
    let opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", dir.to_string_lossy());
    let st = as_pg_user(
        &pg_ctl,
        &["-D", &data.to_string_lossy(), "-o", &opts, "-l", &dir.join("log").to_string_lossy(), "-w", "start"],
    )
    .output()
    .expect("pg_ctl runs");
    assert!(st.status.success(), "pg_ctl start failed: {}", String::from_utf8_lossy(&st.stderr));
    let _ = CLUSTER_DIR.set(dir.clone());
    unsafe { libc::atexit(stop_cluster) };
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

/// URL of a database we may create databases from.
pub fn admin_url() -> &'static str {
    ADMIN_URL.get_or_init(|| {
        // As `main` does: a test's pool and listener reconnect when its
        // database is dropped, which can fall on the process's exit.
        switchboard::db::tls_exit::keep_tls_state_through_exit();
        let url = std::env::var("SWITCHBOARD_TEST_ADMIN_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let url = switchboard::db::tls_exit::without_gss_probe(&url);
        let url = if PgConnection::establish(&url).is_ok() {
            url
        } else {
            switchboard::db::tls_exit::without_gss_probe(&start_throwaway_cluster())
        };
        sweep_leftovers(&url);
        url
    })
}

/// Drops test databases whose test process is gone (a killed run).
fn sweep_leftovers(admin: &str) {
    let Ok(mut conn) = PgConnection::establish(admin) else {
        return;
    };
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    let rows: Vec<Row> = diesel::sql_query("SELECT datname FROM pg_database WHERE datname LIKE 'sbt\\_%'")
        .load(&mut conn)
        .unwrap_or_default();
    for r in rows {
        let pid = r.datname.split('_').nth(1).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = conn.batch_execute(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", r.datname));
            }
        }
    }
}

/// A database of one's own, with `public` migrated; dropped on `Drop`.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub fn new() -> TestDb {
        let admin = admin_url();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("sbt_{}_{}_{}", std::process::id(), n, rand_suffix());
        let mut conn = PgConnection::establish(admin).expect("admin connection");
        conn.batch_execute(&format!("CREATE DATABASE \"{name}\"")).expect("create test database");
        let url = with_db(admin, &name);
        let mut c = PgConnection::establish(&url).expect("connect test database");
        run_public_migrations(&mut c).expect("public migrations");
        TestDb { name, url }
    }

    pub fn pool(&self, size: u32) -> PgPool {
        connect_pool(&self.url, PoolOptions { max_size: size, min_idle: Some(size), ..Default::default() })
            .expect("pool")
    }

    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(&self.url).expect("connect")
    }

    /// The operator's command line on this database: `switchboard args…`,
    /// without the environment's log settings, from a directory with no
    /// `.env`. Add more environment, then run it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command.args(args).env("DATABASE_URL", &self.url).env_remove("RUST_LOG").current_dir(std::env::temp_dir());
        command
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Ok(mut conn) = PgConnection::establish(admin_url()) {
            let _ = conn.batch_execute(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name));
        }
    }
}

fn rand_suffix() -> String {
    use rand::Rng;
    let mut r = rand::thread_rng();
    (0..6).map(|_| (b'a' + r.gen_range(0..26)) as char).collect()
}

pub fn test_config(db: &TestDb, signup: Signup) -> ServerConfig {
    ServerConfig {
        db: DbConfig { database_url: Secret::new(db.url.clone()), pool_size: 4 },
        bind: "127.0.0.1:0".parse().expect("addr"),
        public_url: "http://127.0.0.1:0".into(),
        jwt_secret: Secret::new(JWT_SECRET.as_bytes().to_vec()),
        encryption_keys: vec![EncryptionKey { id: "k1".into(), key: Secret::new([7u8; 32]) }],
        signup,
        operator_token: Some(Secret::new(OPERATOR_TOKEN.into())),
        meta: MetaConfig {
            app_id: "1234567890123456".into(),
            app_secret: Secret::new("fake_app_secret_0123456789abcdef".into()),
            verify_token: Secret::new("verify-me".into()),
            graph_url: "http://127.0.0.1:9".into(),
            graph_version: "v24.0".into(),
            dialog_url: "http://127.0.0.1:9".into(),
        },
        json_logs: false,
        allowed_origins: vec![ALLOWED_ORIGIN.into()],
        // As an operator would set it; tests open a few sockets a member.
        ws_max_per_member: Some(32),
        webhooks_private_ok: true,
        mail: None,
        keep_alive: switchboard::http::KEEP_ALIVE,
    }
}

/// A running server on port 0 against its own database, with its own fake
/// Meta (also on port 0) as Graph API and OAuth dialog.
pub struct TestApp {
    pub base: String,
    pub fake_base: String,
    pub fake: switchboard::meta::fake::FakeMeta,
    pub client: reqwest::Client,
    pub pool: PgPool,
    pub config: Arc<ServerConfig>,
    pub state: actix_web::web::Data<switchboard::app::AppState>,
    handles: Vec<actix_web::dev::ServerHandle>,
    pub db: TestDb,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Signup::Open).await
}

pub async fn spawn_app_with(signup: Signup) -> TestApp {
    spawn(signup, true).await
}

/// The server without its background workers (webhook processor, sender):
/// tests that drive processing by hand, as after a crash.
pub async fn spawn_app_without_workers() -> TestApp {
    spawn(Signup::Open, false).await
}

/// The server with mail on, sent to the SMTP server at `smtp_url`.
/// Where the mail-sending app's notice mails link to.
pub const CONVERSATION_URL: &str = "https://inbox.example.test/{tenant}/conversations/{conversation_id}";

pub async fn spawn_app_with_mail(smtp_url: &str) -> TestApp {
    spawn_with(Signup::Open, true, Some(smtp_url.to_string())).await
}

async fn spawn(signup: Signup, workers: bool) -> TestApp {
    spawn_with(signup, workers, None).await
}

async fn spawn_with(signup: Signup, workers: bool, smtp_url: Option<String>) -> TestApp {
    let db = TestDb::new();
    let fake = switchboard::meta::fake::FakeMeta::new(switchboard::meta::fake::FakeConfig::default());
    let fake_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let fake_base = format!("http://127.0.0.1:{}", fake_listener.local_addr().expect("addr").port());
    let fake_server = fake.build_server(fake_listener).expect("fake server");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://127.0.0.1:{}", listener.local_addr().expect("addr").port());
    let mut cfg = test_config(&db, signup);
    cfg.public_url = base.clone();
    cfg.meta.graph_url = fake_base.clone();
    cfg.meta.dialog_url = fake_base.clone();
    cfg.mail = smtp_url.map(|url| switchboard::config::MailConfig {
        smtp_url: Secret::new(url),
        from: "Switchboard <no-reply@switchboard.test>".into(),
        conversation_url: Some(CONVERSATION_URL.into()),
    });
    let config = Arc::new(cfg);
    let pool = db.pool(4);
    let state = actix_web::web::Data::new(switchboard::app::AppState::new(config.clone(), Db::new(pool.clone())));
    let server = switchboard::http::build_server(state.clone(), listener).expect("server");
    let handles = vec![server.handle(), fake_server.handle()];
    fake.set_webhook_target(Some(format!("{base}/webhooks/meta")));
    if workers {
        switchboard::app::spawn_workers(&state);
    }
    actix_web::rt::spawn(server);
    actix_web::rt::spawn(fake_server);
    TestApp {
        base,
        fake_base,
        fake: fake.clone(),
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // Below the server's keep-alive, as our clients are: with
            // actix's 5 s (before `http::KEEP_ALIVE`), a connection idle
            // that long was reused just as the server closed it, and the
            // request failed (`IncompleteMessage`) in a test that had
            // waited 5 s between two calls.
            .pool_idle_timeout(switchboard::http::CLIENT_IDLE)
            .build()
            .expect("client"),
        pool,
        config,
        state,
        handles,
        db,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Stop accepting; the database is dropped with FORCE right after.
        for h in self.handles.clone() {
            actix_web::rt::spawn(async move { h.stop(false).await });
        }
    }
}

pub struct Resp {
    pub status: u16,
    pub body: serde_json::Value,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Calls the fake Meta's control API.
    pub async fn fake(&self, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let res = self.client.request(m, format!("{}{}", self.fake_base, path)).json(&body).send().await.expect("fake");
        assert!(res.status().is_success(), "fake {path}: {}", res.status());
        res.json().await.expect("json")
    }

    pub async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<serde_json::Value>) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(m, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (kind, challenge, allow) = (header("content-type"), header("www-authenticate"), header("allow"));
        let text = res.text().await.expect("body");
        // RFC 9110: a 401 says how to authenticate (§15.5.2), a 405 what
        // the path takes (§15.5.6); a JSON body says it is JSON.
        assert!(status != 401 || challenge.is_some(), "{method} {path}: a 401 without WWW-Authenticate: {text}");
        assert!(status != 405 || allow.is_some(), "{method} {path}: a 405 without Allow: {text}");
        let json_kind = kind.as_deref().is_some_and(|k| k.starts_with("application/json"));
        let is_json = text.starts_with('{') && serde_json::from_str::<serde_json::Value>(&text).is_ok();
        assert!(!is_json || json_kind, "{method} {path}: JSON sent as {kind:?}: {text}");
        let body = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        if status >= 400 {
            assert_error_shape(status, &body);
        }
        // Every answer any test reads keeps API.md's ids and times,
        // but the document, which describes them.
        let mut out = Vec::new();
        if !path.starts_with("/api/openapi.json") {
            crate::openapi::keeps_conventions(&body, "$", &mut out);
        }
        // A list, read or a write's result, is `{items, next_cursor}`, the
        // cursor a string or null.
        if body.get("items").is_some_and(serde_json::Value::is_array)
            && !body.get("next_cursor").is_some_and(|c| c.is_null() || c.is_string())
        {
            out.push(format!("a list without a next_cursor: {:?}", body.get("next_cursor")));
        }
        assert!(out.is_empty(), "{method} {path}: ids or times off the contract: {out:?}\n{body}");
        Resp { status, body }
    }

    /// Creates a tenant through the API (sign-up) and returns the owner's login.
    pub async fn signup(&self, slug: &str, email: &str, password: &str) -> serde_json::Value {
        let r = self
            .call(
                "POST",
                "/api/tenants",
                None,
                Some(serde_json::json!({"slug": slug, "name": format!("{slug} inc"), "owner_email": email, "owner_password": password})),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        self.login(email, password, slug).await
    }

    pub async fn login(&self, email: &str, password: &str, tenant: &str) -> serde_json::Value {
        let r = self
            .call(
                "POST",
                "/api/auth/login",
                None,
                Some(serde_json::json!({"email": email, "password": password, "tenant": tenant})),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body
    }
}

/// Every error answer is `{"error": {"code": "...", "message": "..."}}`.
/// Of answers to creates sent at once, exactly one made something (201)
/// and every other was refused 409 with `code`: the one made.
pub fn one_made_rest_refused<'a>(answers: &'a [Resp], code: &str) -> &'a Resp {
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    statuses.sort_unstable();
    let mut expected = vec![409; answers.len().saturating_sub(1)];
    expected.insert(0, 201);
    assert_eq!(statuses, expected, "{:?}", answers.iter().map(|r| &r.body).collect::<Vec<_>>());
    for refused in answers.iter().filter(|r| r.status == 409) {
        assert_eq!(refused.body["error"]["code"], code, "{:?}", refused.body);
    }
    answers.iter().find(|r| r.status == 201).expect("one made")
}

pub fn assert_error_shape(status: u16, body: &serde_json::Value) {
    let code = body.pointer("/error/code").and_then(|c| c.as_str());
    let message = body.pointer("/error/message").and_then(|c| c.as_str());
    assert!(
        code.is_some_and(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
            && message.is_some_and(|m| !m.is_empty()),
        "status {status} without the JSON error shape: {body}"
    );
}

/// What [`transaction_held_until_waited`] answers: whether a wait on a
/// lock was seen, and how the rest of the transaction went.
pub type HeldOutcome = std::thread::JoinHandle<(bool, Result<(), String>)>;

/// Another transaction, on a connection of its own, in the middle of its
/// work: `begin` (SQL that begins it and takes its locks) runs, then the
/// returned receiver hears so; once some other connection waits on a lock
/// (at most 5 s), `then` runs and the transaction commits. The thread
/// answers whether a wait was seen, and how `then` and the commit went.
pub fn transaction_held_until_waited(
    url: &str,
    begin: String,
    then: Option<String>,
) -> (std::sync::mpsc::Receiver<()>, HeldOutcome) {
    let (url, (begun_tx, begun_rx)) = (url.to_string(), std::sync::mpsc::channel());
    let held = std::thread::spawn(move || {
        let mut holder = PgConnection::establish(&url).expect("connect");
        let mut watcher = PgConnection::establish(&url).expect("connect");
        holder.batch_execute(&begin).expect("begin");
        begun_tx.send(()).expect("told");
        let waited = a_lock_waited_for(&mut watcher, std::time::Duration::from_secs(5));
        let went = then.map_or(Ok(()), |sql| holder.batch_execute(&sql)).and_then(|()| holder.batch_execute("COMMIT"));
        (waited, went.map_err(|e| e.to_string()))
    });
    (begun_rx, held)
}

/// Whether some connection of the test's database waits on a lock within
/// `at_most` (polled through `watcher`, a connection of its own).
pub fn a_lock_waited_for(watcher: &mut PgConnection, at_most: std::time::Duration) -> bool {
    #[derive(diesel::QueryableByName)]
    struct Waiting {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let deadline = std::time::Instant::now() + at_most;
    loop {
        let sql = "SELECT count(*) AS n FROM pg_stat_activity \
                   WHERE datname = current_database() AND wait_event_type = 'Lock'";
        let w: Waiting = diesel::sql_query(sql).get_result(watcher).expect("watch");
        if w.n > 0 || std::time::Instant::now() > deadline {
            return w.n > 0;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The one bigint `n` that `sql` answers on `conn`, or its error as text.
pub fn bigint(conn: &mut PgConnection, sql: &str) -> Result<i64, String> {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(sql).get_result::<N>(conn).map(|r| r.n).map_err(|e| e.to_string())
}

/// Begins a transaction on `conn` that runs `sql` (which takes some lock
/// and answers a bigint `n`) and holds what it took: the connection's
/// backend pid, for [`a_wait_on`].
pub fn holding(conn: &mut PgConnection, sql: &str) -> Result<i64, String> {
    diesel::sql_query("BEGIN").execute(conn).map_err(|e| e.to_string())?;
    bigint(conn, sql)?;
    bigint(conn, "SELECT pg_backend_pid()::bigint AS n")
}

/// Whether some connection waits for a lock backend `pid` holds within
/// `at_most` (polled through `watcher`, a connection of its own).
pub fn a_wait_on(watcher: &mut PgConnection, pid: i64, at_most: std::time::Duration) -> bool {
    let sql = format!("SELECT count(*) AS n FROM pg_stat_activity WHERE {pid} = ANY(pg_catalog.pg_blocking_pids(pid))");
    let deadline = std::time::Instant::now() + at_most;
    loop {
        let waiting = bigint(watcher, &sql).expect("watch") > 0;
        if waiting || std::time::Instant::now() > deadline {
            return waiting;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits until `check` holds (polling), or fails after a few seconds.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

impl TestApp {
    /// Posts a webhook body signed with the app secret (exact bytes).
    pub async fn webhook(&self, body: &[u8]) -> u16 {
        self.webhook_at(&self.base, body).await
    }

    /// As [`TestApp::webhook`], to the server at `base` (a `serve` process
    /// on this app's database and secret).
    pub async fn webhook_at(&self, base: &str, body: &[u8]) -> u16 {
        let sig = switchboard::meta::webhook::sign(self.config.meta.app_secret.expose().as_bytes(), body);
        self.client
            .post(format!("{base}/webhooks/meta"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sig)
            .body(body.to_vec())
            .send()
            .await
            .expect("webhook")
            .status()
            .as_u16()
    }

    /// Counts rows with SQL on a fresh connection.
    pub fn count(&self, sql: &str) -> i64 {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = self.db.conn();
        diesel::sql_query(sql).get_result::<N>(&mut conn).map(|r| r.n).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs SQL on a fresh connection (set-up the API cannot do, such as
    /// moving a time back); how many rows it touched.
    pub fn exec(&self, sql: &str) -> usize {
        let mut conn = self.db.conn();
        diesel::sql_query(sql).execute(&mut conn).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Stores raw webhook bodies as the endpoint would, unprocessed (with
    /// diesel, not the product's statement: the rows are seeded apart from
    /// the code under test).
    pub fn store_bodies(&self, bodies: &[Vec<u8>]) {
        let mut conn = self.db.conn();
        let rows: Vec<_> = bodies.iter().map(|b| switchboard::db::schema::webhook_events::body.eq(b)).collect();
        diesel::insert_into(switchboard::db::schema::webhook_events::table)
            .values(&rows)
            .execute(&mut conn)
            .expect("store");
    }

    /// Waits until no webhook is pending.
    pub async fn processed(&self) {
        eventually("webhooks processed", || async {
            self.count("SELECT count(*) AS n FROM public.webhook_events WHERE status = 'pending'") == 0
        })
        .await;
    }
}

/// This checkout's root: `cargo test` names it at run time; the compiled-in
/// one may be another checkout's whose binaries a shared target directory
/// reused.
pub fn project_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()).into()
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(project_dir().join("../shared/fixtures/meta").join(name)).expect("fixture")
}

/// `messenger_text.json` (to page A) from another sender, with another Meta
/// id and text: the body of one customer message.
pub fn messenger_text(sender: &str, mid: &str, text: &str) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&fixture("messenger_text.json")).expect("fixture");
    let m = &mut v["entry"][0]["messaging"][0];
    m["sender"]["id"] = serde_json::json!(sender);
    m["message"]["mid"] = serde_json::json!(mid);
    m["message"]["text"] = serde_json::json!(text);
    serde_json::to_vec(&v).expect("body")
}

pub fn token(v: &serde_json::Value, key: &str) -> String {
    v[key].as_str().expect("token").to_string()
}

/// One request on `tcp`, and its answer's status; `None` if the server had
/// closed the connection.
pub async fn status_on(tcp: &mut tokio::net::TcpStream, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).await.ok()?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok())
                .expect("a content-length");
            if body.len() >= length {
                return head.split(' ').nth(1).and_then(|s| s.parse().ok());
            }
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut chunk))
            .await
            .expect("an answer")
            .ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&chunk[..n]);
    }
}
