//! The operator's command line, run as a process.

use std::process::{Command, Output};

use crate::common::TestDb;

fn switchboard(db: &TestDb, args: &[&str]) -> Output {
    db.command(args).output().expect("run switchboard")
}

/// The one text value (`v`) `sql` reads.
fn value(db: &TestDb, sql: &str) -> String {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct One {
        #[diesel(sql_type = diesel::sql_types::Text)]
        v: String,
    }
    diesel::sql_query(sql).get_result::<One>(&mut db.conn()).expect(sql).v
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn tenant_lifecycle_and_clear_errors() {
    let db = TestDb::new();
    let ok = |args: &[&str]| {
        let o = switchboard(&db, args);
        assert!(o.status.success(), "{args:?}: {:?} {}", o.status, text(&o));
        text(&o)
    };
    let fails = |args: &[&str]| {
        let o = switchboard(&db, args);
        assert!(!o.status.success(), "{args:?} should fail: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
        err
    };

    let out = ok(&[
        "tenant",
        "create",
        "acme",
        "--name",
        "Acme",
        "--owner-email",
        "ann@acme.test",
        "--owner-password",
        "ann-password-1",
    ]);
    assert!(out.contains("tenant_acme"), "{out}");
    for bad in ["a; drop schema public", "pg-catalog", "public", "Acme"] {
        let err = fails(&[
            "tenant",
            "create",
            bad,
            "--name",
            "X",
            "--owner-email",
            "x@x.test",
            "--owner-password",
            "x-password-1",
        ]);
        assert!(err.contains("slug"), "{err}");
    }
    let err = fails(&[
        "tenant",
        "create",
        "acme",
        "--name",
        "Again",
        "--owner-email",
        "ann@acme.test",
        "--owner-password",
        "ann-password-1",
    ]);
    assert!(err.contains("already exists"), "{err}");
    ok(&[
        "user",
        "create",
        "--email",
        "bob@acme.test",
        "--password",
        "bob-password-1",
        "--tenant",
        "acme",
        "--role",
        "agent",
    ]);
    // The last owner stays one, as over the API; nothing is written.
    // (No password is needed for someone who exists; someone new needs one.)
    let demote_ann = ["user", "create", "--email", "ann@acme.test", "--tenant", "acme"];
    let err = fails(&["user", "create", "--email", "cy@acme.test", "--tenant", "acme", "--role", "agent"]);
    assert!(err.contains("password"), "{err}");
    let err = fails(&["user", "create", "--email", "cy@acme.test"]);
    assert!(err.contains("--password"), "{err}");
    let err = fails(&[&demote_ann[..], &["--role", "agent"]].concat());
    assert!(err.contains("last owner"), "{err}");
    let role = |email: &str| {
        let sql =
            format!("SELECT m.role AS v FROM memberships m JOIN users u ON u.id = m.user_id WHERE u.email = '{email}'");
        value(&db, &sql)
    };
    assert_eq!(role("ann@acme.test"), "owner");
    // With another owner she may step down; each change is audited, by
    // nobody (an operator).
    let make_bob = ["user", "create", "--email", "bob@acme.test", "--password", "bob-password-1", "--tenant", "acme"];
    // Bob exists: the password given is said to be left unused.
    let out = ok(&[&make_bob[..], &["--role", "owner"]].concat());
    assert!(out.contains("is owner of acme"), "{out}");
    assert!(out.contains("password given was not used"), "{out}");
    assert!(ok(&[&demote_ann[..], &["--role", "admin"]].concat()).contains("is admin of acme"));
    assert_eq!((role("ann@acme.test"), role("bob@acme.test")), ("admin".to_string(), "owner".to_string()));
    let audited = "SELECT count(*)::text AS v FROM tenant_acme.audit_log \
                   WHERE action = 'member.role_changed' AND actor_user_id IS NULL";
    assert_eq!(value(&db, audited), "2");
    ok(&["tenant", "suspend", "acme"]);
    assert!(ok(&["tenant", "list"]).contains("suspended"));
    // An operator may still set up a suspended tenant's members.
    let dan = ["user", "create", "--email", "dan@acme.test", "--password", "dan-password-1", "--tenant", "acme"];
    assert!(ok(&[&dan[..], &["--role", "agent"]].concat()).contains("is agent of acme"));
    ok(&["tenant", "resume", "acme"]);
    let out = ok(&["migrate", "--jobs", "2"]);
    assert!(out.contains("1 tenant(s): 1 already current"), "{out}");
    // A schema behind this release (an upgrade not yet migrated): the
    // operator is told to migrate, then it works.
    {
        use diesel::connection::SimpleConnection;
        let behind = "UPDATE public.tenants SET schema_version = '0' WHERE slug = 'acme'";
        db.conn().batch_execute(behind).expect("behind");
    }
    let eve = ["user", "create", "--email", "eve@acme.test", "--password", "eve-password-1", "--tenant", "acme"];
    let err = fails(&[&eve[..], &["--role", "agent"]].concat());
    assert!(err.contains("switchboard migrate"), "{err}");
    ok(&["migrate"]);
    assert!(ok(&[&eve[..], &["--role", "agent"]].concat()).contains("is agent of acme"));
    let err = fails(&["tenant", "drop", "acme"]);
    assert!(err.contains("--yes"), "{err}");
    ok(&["tenant", "drop", "acme", "--yes"]);
    assert!(!ok(&["tenant", "list"]).contains("acme"));
    let err = fails(&["tenant", "suspend", "acme"]);
    assert!(err.contains("not found"), "{err}");

    // Configuration errors name the variable, in one line.
    let o = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("serve")
        .env("DATABASE_URL", &db.url)
        .env("SWITCHBOARD_JWT_SECRET", "short")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("SWITCHBOARD_JWT_SECRET"), "{err}");
    // With everything else valid (under `timeout`: were the value let
    // through, the server would run).
    for (variable, bad) in
        [("SWITCHBOARD_ALLOWED_ORIGINS", "https://inbox.example/app"), ("SWITCHBOARD_WS_MAX_PER_MEMBER", "lots")]
    {
        let o = Command::new("timeout")
            .args(["20", env!("CARGO_BIN_EXE_switchboard"), "serve"])
            .env("DATABASE_URL", &db.url)
            .env("SWITCHBOARD_JWT_SECRET", "a-jwt-secret-of-more-than-32-bytes!!")
            .env("SWITCHBOARD_ENCRYPTION_KEYS", "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
            .env("META_APP_ID", "1")
            .env("META_APP_SECRET", "s")
            .env("META_VERIFY_TOKEN", "v")
            .env(variable, bad)
            .current_dir(std::env::temp_dir())
            .output()
            .expect("run");
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(variable) && err.trim().lines().count() == 1, "{err}");
    }

    // A database that does not answer: one line, libpq's reason once.
    let o = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["tenant", "list"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
        .env_remove("RUST_LOG")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert_eq!(err.matches("Connection refused").count(), 1, "{err}");
}

#[test]
fn simulate_refuses_what_it_cannot_send_in_one_line() {
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("simulate")
            .args(args)
            .env("META_APP_SECRET", "sim-secret")
            .env_remove("RUST_LOG")
            .output()
            .expect("run switchboard");
        assert!(!o.status.success(), "{args:?} should fail: {}", text(&o));
        String::from_utf8_lossy(&o.stderr).trim().to_string()
    };
    let nowhere = run(&[]);
    assert!(nowhere.contains("--page") && nowhere.lines().count() == 1, "{nowhere}");
    let nothing = run(&["--phone", "123456789012345", "--kinds", "postback"]);
    assert!(nothing.contains("none of --kinds") && nothing.lines().count() == 1, "{nothing}");
    assert!(run(&["--page", "1", "--kinds", "text,fax"]).contains("invalid value 'fax'"));
}

/// A benchmark stopped with Ctrl-C leaves its scratch database behind (no
/// `Drop` runs); the next benchmark drops it, since its process is gone,
/// and leaves alone one whose process still runs.
#[test]
fn a_benchmarks_leftover_database_is_dropped_by_the_next() {
    use diesel::prelude::*;
    let admin = crate::common::admin_url();
    let mut conn = diesel::PgConnection::establish(admin).expect("admin");
    let prefix = switchboard::bench::SCRATCH_PREFIX;
    // Above any Linux pid (pid_max is at most 2^22).
    let gone = format!("{prefix}sweeptest_{}", 4_194_999);
    let running = format!("{prefix}sweeptest_{}", std::process::id());
    for name in [&gone, &running] {
        diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\"")).execute(&mut conn).expect("drop");
        diesel::sql_query(format!("CREATE DATABASE \"{name}\"")).execute(&mut conn).expect("create");
    }
    let scratch = switchboard::bench::ScratchDb::create(admin, "sweep").expect("scratch");
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    let left: Vec<String> = diesel::sql_query(format!(
        "SELECT datname FROM pg_database WHERE datname IN ('{gone}', '{running}') ORDER BY datname"
    ))
    .load::<Name>(&mut conn)
    .expect("databases")
    .into_iter()
    .map(|n| n.datname)
    .collect();
    drop(scratch);
    diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{running}\"")).execute(&mut conn).expect("drop");
    diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{gone}\"")).execute(&mut conn).expect("drop");
    assert_eq!(left, vec![running], "the gone process's database dropped, the running one's kept");
}
