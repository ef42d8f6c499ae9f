//! Mail (`mail`): invitations mailed, a forgotten password reset by mail,
//! and what the worker does with an SMTP server that refuses or is gone.
//! The SMTP server is [`Sink`], a small one that keeps what it is sent (a
//! stand-in for the relay an operator names, as the fake Meta is Meta's).

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use crate::common::{eventually, spawn_app, spawn_app_with_mail, TestApp};

/// One mail the sink took.
#[derive(Clone, Debug)]
struct Received {
    to: String,
    data: String,
}

/// An SMTP server on a port of its own: it takes every mail but to
/// addresses holding `refused` (550), and keeps them.
struct Sink {
    url: String,
    mails: Arc<Mutex<Vec<Received>>>,
}

impl Sink {
    fn start() -> Sink {
        Sink::start_with(|| {})
    }

    /// A sink that runs `on_mail` as it takes each mail, before it answers.
    fn start_with(on_mail: impl Fn() + Send + Sync + 'static) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("smtp://127.0.0.1:{}", listener.local_addr().expect("addr").port());
        let mails: Arc<Mutex<Vec<Received>>> = Arc::default();
        let kept = mails.clone();
        let on_mail: Arc<dyn Fn() + Send + Sync> = Arc::new(on_mail);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (kept, on_mail) = (kept.clone(), on_mail.clone());
                std::thread::spawn(move || Sink::serve(stream, &kept, &*on_mail));
            }
        });
        Sink { url, mails }
    }

    fn serve(stream: std::net::TcpStream, kept: &Mutex<Vec<Received>>, on_mail: &(dyn Fn() + Send + Sync)) {
        let mut out = match stream.try_clone() {
            Ok(out) => out,
            Err(_) => return,
        };
        let mut lines = BufReader::new(stream);
        let mut say = |text: &str| out.write_all(format!("{text}\r\n").as_bytes()).is_ok();
        if !say("220 sink.test ESMTP") {
            return;
        }
        let mut to = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let command = line.trim_end().to_ascii_uppercase();
            let answer = if command.starts_with("EHLO") || command.starts_with("HELO") {
                "250 sink.test"
            } else if command.starts_with("MAIL FROM") {
                "250 OK"
            } else if command.starts_with("RCPT TO") {
                to = line.trim_end()[8..].trim().trim_matches(|c| c == '<' || c == '>').to_string();
                if to.contains("refused") {
                    "550 5.1.1 no such mailbox"
                } else {
                    "250 OK"
                }
            } else if command == "DATA" {
                if !say("354 go ahead") {
                    return;
                }
                let mut data = String::new();
                loop {
                    line.clear();
                    if lines.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    if line == ".\r\n" {
                        break;
                    }
                    data.push_str(&line);
                }
                if let Ok(mut kept) = kept.lock() {
                    kept.push(Received { to: to.clone(), data });
                }
                on_mail();
                "250 OK queued"
            } else if command == "QUIT" {
                let _ = say("221 bye");
                return;
            } else {
                "250 OK"
            };
            if !say(answer) {
                return;
            }
        }
    }

    fn to(&self, address: &str) -> Vec<Received> {
        self.mails.lock().map(|m| m.iter().filter(|r| r.to == address).cloned().collect()).unwrap_or_default()
    }
}

/// The link a mail holds that starts with `start` (the body is sent as
/// quoted-printable or plain; the link has neither `=` nor long lines).
fn link_in(mail: &Received, start: &str) -> String {
    let text = mail.data.replace("=\r\n", "");
    let at = text.find(start).unwrap_or_else(|| panic!("no {start} in {text}"));
    text[at..].split_whitespace().next().unwrap_or_default().to_string()
}

/// A mail's subject and body as written, its transfer encodings undone
/// (lettre picks base64 or quoted-printable by what the text holds).
fn read(mail: &Received) -> (String, String) {
    use base64::Engine;
    let b64 = |s: &str| {
        let bytes = base64::engine::general_purpose::STANDARD.decode(s.split_whitespace().collect::<String>());
        String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned()
    };
    let qp = |s: &str| {
        let s = s.replace("=\r\n", "");
        let (mut out, bytes) = (Vec::new(), s.as_bytes());
        let mut i = 0;
        while i < bytes.len() {
            let hex = (bytes[i] == b'=' && i + 2 < bytes.len())
                .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()))
                .flatten();
            match hex {
                Some(b) => (out.push(b), i += 3),
                None => (out.push(bytes[i]), i += 1),
            };
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    let (head, body) = mail.data.split_once("\r\n\r\n").unwrap_or(("", &mail.data));
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    let lower = unfolded.to_ascii_lowercase();
    let body = if lower.contains("content-transfer-encoding: base64") {
        b64(body)
    } else if lower.contains("content-transfer-encoding: quoted-printable") {
        qp(body)
    } else {
        body.to_string()
    };
    let raw = unfolded.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or_default();
    // Encoded words (RFC 2047), base64 or Q; the space between two of
    // them is not the text's.
    let mut subject = String::new();
    let mut after_encoded = false;
    for word in raw.split(' ') {
        let encoded = word.strip_prefix("=?utf-8?").and_then(|w| w.strip_suffix("?="));
        if !(subject.is_empty() || after_encoded && encoded.is_some()) {
            subject.push(' ');
        }
        match encoded {
            Some(w) if w.starts_with("b?") || w.starts_with("B?") => subject.push_str(&b64(&w[2..])),
            Some(w) => subject.push_str(&qp(&w[2..].replace('_', " "))),
            None => subject.push_str(word),
        }
        after_encoded = encoded.is_some();
    }
    (subject, body)
}

async fn mail_to(sink: &Sink, address: &str, count: usize) -> Vec<Received> {
    eventually(&format!("{count} mail(s) to {address}"), || async { sink.to(address).len() >= count }).await;
    sink.to(address)
}

/// Runs `sql` on the test's database.
fn run(app: &TestApp, sql: &str) {
    use diesel::connection::SimpleConnection;
    app.db.conn().batch_execute(sql).expect("sql");
}

fn code(r: &crate::common::Resp) -> (u16, &str) {
    (r.status, r.body["error"]["code"].as_str().unwrap_or(""))
}

#[actix_web::test]
async fn a_forgotten_password_is_reset_by_mail() {
    let sink = Sink::start();
    let app = spawn_app_with_mail(&sink.url).await;
    let owner = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let old_refresh = owner["refresh_token"].as_str().expect("refresh").to_string();
    let outbox = || app.count("SELECT count(*) AS n FROM public.mail_outbox");

    // Anyone may ask, for any address: the answer tells nothing.
    let ask = |email: &str| app.call("POST", "/api/auth/password-reset", None, Some(json!({"email": email})));
    // Nor by the time it takes: every answer waits out the same floor.
    let floor = switchboard::auth::password_reset::ANSWER_AFTER;
    let asked = std::time::Instant::now();
    let r = ask("Ann@ACME.test").await;
    assert_eq!((r.status, &r.body), (202, &json!({})));
    assert!(asked.elapsed() >= floor);
    let asked = std::time::Instant::now();
    let r = ask("nobody@acme.test").await;
    assert_eq!((r.status, &r.body), (202, &json!({})));
    assert!(asked.elapsed() >= floor);
    assert_eq!(outbox(), 1, "no mail for an address no account has");
    assert_eq!(code(&ask("not an address").await).0, 422);
    let mails = mail_to(&sink, "ann@acme.test", 1).await;
    assert!(mails[0].data.contains("Subject: Reset your Switchboard password"), "{}", mails[0].data);
    let link = link_in(&mails[0], &format!("{}/reset#sbr_", app.base));
    // Asked again at once: the same answer, no second mail.
    assert_eq!(ask("ann@acme.test").await.status, 202);
    assert_eq!(outbox(), 1);
    eventually("the mail marked sent, its body emptied", || async {
        app.count("SELECT count(*) AS n FROM public.mail_outbox WHERE sent_at IS NOT NULL AND body = ''") == 1
    })
    .await;

    // The link's page, then the new password.
    let page = app.client.get(app.url("/reset")).send().await.expect("page");
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap_or_default().contains("/api/auth/password-reset/confirm"));
    let token = link.split('#').nth(1).expect("a token").to_string();
    let confirm = |token: &str, password: &str| {
        app.call("POST", "/api/auth/password-reset/confirm", None, Some(json!({"token": token, "password": password})))
    };
    assert_eq!(code(&confirm(&token, "short").await), (422, "weak_password"));
    // A made-up link is refused before its password is looked at.
    assert_eq!(code(&confirm(&format!("sbr_{}", "A".repeat(43)), "short").await), (404, "reset_not_found"));
    let r = confirm(&token, "ann-new-password-2").await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(code(&confirm(&token, "ann-new-password-3").await), (404, "reset_not_found"), "once");
    assert_eq!(code(&confirm("sbr_nonsense", "ann-new-password-3").await), (404, "reset_not_found"));
    // Every login ended; the new password signs in, the old does not.
    let r = app.call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": old_refresh}))).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    app.login("ann@acme.test", "ann-new-password-2", "acme").await;
    let r = app
        .call(
            "POST",
            "/api/auth/login",
            None,
            Some(json!({"email": "ann@acme.test", "password": "ann-password-1", "tenant": "acme"})),
        )
        .await;
    assert_eq!(r.status, 401);

    // Two-step sign-in stays: a reset password is only the first step.
    let ann = app.login("ann@acme.test", "ann-new-password-2", "acme").await;
    let ann = ann["access_token"].as_str().expect("token").to_string();
    let r = app.call("POST", "/api/me/mfa", Some(&ann), Some(json!({"current_password": "ann-new-password-2"}))).await;
    let secret = r.body["secret"].as_str().expect("secret").to_string();
    let otp = crate::mfa::code(&secret, crate::mfa::step_now());
    assert_eq!(app.call("POST", "/api/me/mfa/confirm", Some(&ann), Some(json!({"code": otp}))).await.status, 200);
    run(&app, "UPDATE public.password_resets SET created_at = now() - interval '2 minutes'");
    assert_eq!(ask("ann@acme.test").await.status, 202);
    let mails = mail_to(&sink, "ann@acme.test", 2).await;
    let token = link_in(&mails[1], &format!("{}/reset#sbr_", app.base)).split('#').nth(1).expect("token").to_string();
    assert_eq!(confirm(&token, "ann-new-password-5").await.status, 204);
    let login = json!({"email": "ann@acme.test", "password": "ann-new-password-5", "tenant": "acme"});
    let r = app.call("POST", "/api/auth/login", None, Some(login)).await;
    assert_eq!(code(&r), (401, "otp_required"), "{:?}", r.body);

    // A link past its hour.
    run(&app, "UPDATE public.password_resets SET created_at = now() - interval '2 minutes'");
    assert_eq!(ask("ann@acme.test").await.status, 202);
    let mails = mail_to(&sink, "ann@acme.test", 3).await;
    let token = link_in(&mails[2], &format!("{}/reset#sbr_", app.base)).split('#').nth(1).expect("token").to_string();
    run(&app, "UPDATE public.password_resets SET expires_at = now() - interval '1 minute'");
    assert_eq!(code(&confirm(&token, "ann-new-password-4").await), (410, "reset_expired"));
}

#[actix_web::test]
async fn without_mail_a_reset_is_refused_for_everyone_alike() {
    let app = spawn_app().await;
    let owner = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let admin = owner["access_token"].as_str().expect("token").to_string();
    for email in ["ann@acme.test", "nobody@acme.test"] {
        let r = app.call("POST", "/api/auth/password-reset", None, Some(json!({"email": email}))).await;
        assert_eq!(code(&r), (503, "mail_unavailable"), "{email}");
    }
    // Bad input is still told as bad input.
    let r = app.call("POST", "/api/auth/password-reset", None, Some(json!({"email": "not an address"}))).await;
    assert_eq!(code(&r), (422, "invalid_email"));
    let bo = json!({"email": "bo@acme.test", "role": "agent"});
    let r = app.call("POST", "/api/invitations", Some(&admin), Some(bo)).await;
    assert_eq!((r.status, &r.body["mailed"]), (201, &json!(false)), "{:?}", r.body);
    assert_eq!(app.count("SELECT count(*) AS n FROM public.mail_outbox"), 0);
    let listed = app.call("GET", "/api/invitations", Some(&admin), None).await;
    assert_eq!(listed.body["items"][0]["mailed"], json!(false), "the admin hands this one over");
}

#[actix_web::test]
async fn an_invitation_is_mailed_and_a_refused_address_given_up() {
    let sink = Sink::start();
    let app = spawn_app_with_mail(&sink.url).await;
    let owner = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let admin = owner["access_token"].as_str().expect("token").to_string();
    let invite = |email: &str| {
        app.call("POST", "/api/invitations", Some(&admin), Some(json!({"email": email, "role": "agent"})))
    };
    let r = invite("bo@acme.test").await;
    assert_eq!((r.status, &r.body["mailed"]), (201, &json!(true)), "{:?}", r.body);
    let listed = app.call("GET", "/api/invitations", Some(&admin), None).await;
    assert_eq!(listed.body["items"][0]["mailed"], json!(true), "{:?}", listed.body);
    let accept_url = r.body["accept_url"].as_str().expect("url").to_string();
    let mails = mail_to(&sink, "bo@acme.test", 1).await;
    assert!(mails[0].data.contains("Subject: Join acme inc on Switchboard"), "{}", mails[0].data);
    assert_eq!(link_in(&mails[0], &format!("{}/invite#sbi_", app.base)), accept_url);
    // The mailed link works as the handed-over one.
    let token = accept_url.split('#').nth(1).expect("token");
    let r = app
        .call("POST", "/api/auth/invitation/accept", None, Some(json!({"token": token, "password": "bo-password-1"})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    // An address the server refuses for good: given up at once, its body
    // emptied, the reason kept.
    assert_eq!(invite("refused@acme.test").await.status, 201);
    eventually("the refused mail given up", || async {
        app.count(
            "SELECT count(*) AS n FROM public.mail_outbox WHERE recipient = 'refused@acme.test' \
               AND failed_at IS NOT NULL AND body = '' AND attempts = 1 AND last_error LIKE '%550%'",
        ) == 1
    })
    .await;
}

/// An SMTP address on a port nobody listens on: every attempt fails.
fn closed_smtp_url() -> String {
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("smtp://127.0.0.1:{}", closed.local_addr().expect("addr").port())
}

#[actix_web::test]
async fn a_server_not_reached_is_tried_again_later() {
    let url = closed_smtp_url();
    let app = spawn_app_with_mail(&url).await;
    let owner = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let admin = owner["access_token"].as_str().expect("token").to_string();
    let r = app
        .call("POST", "/api/invitations", Some(&admin), Some(json!({"email": "bo@acme.test", "role": "agent"})))
        .await;
    assert_eq!(r.status, 201);
    eventually("the first attempt failed and another planned a minute on", || async {
        app.count(
            "SELECT count(*) AS n FROM public.mail_outbox WHERE attempts = 1 AND sent_at IS NULL \
               AND failed_at IS NULL AND last_error IS NOT NULL AND body <> '' \
               AND next_attempt_at BETWEEN now() + interval '30 seconds' AND now() + interval '70 seconds'",
        ) == 1
    })
    .await;
    // The last attempt fails too: given up, its body emptied.
    run(
        &app,
        &format!(
            "UPDATE public.mail_outbox SET attempts = {}, next_attempt_at = now()",
            switchboard::mail::MOST_ATTEMPTS - 1
        ),
    );
    let mailer = switchboard::mail::Mailer::new(app.config.mail.as_ref().expect("mail on")).expect("mailer");
    assert_eq!(switchboard::mail::send_due(&app.pool, &mailer).await.ok(), Some(0), "none sent");
    // (The server's own worker may have taken it first: either gives up.)
    eventually("the mail given up", || async {
        app.count(&format!(
            "SELECT count(*) AS n FROM public.mail_outbox WHERE attempts = {} AND failed_at IS NOT NULL AND body = ''",
            switchboard::mail::MOST_ATTEMPTS
        )) == 1
    })
    .await;
}

/// Every pooled connection is cut (a database restart, a proxy dropping
/// idle flows) between two passes: the next pass claims, sends and settles
/// on fresh connections. Before, it failed on the first dead one and the
/// mail waited for the pass after; a settle failed so would have left a
/// mail that went to be sent again once its lease ran out.
#[actix_web::test]
async fn a_pass_after_the_connections_were_cut_sends_and_settles() {
    let app = crate::common::spawn_app_without_workers().await;
    let pool = app.db.pool(2);
    switchboard::mail::queue(&mut app.db.conn(), "bo@acme.test", "Hello", "Hi Bo").expect("queued");
    let cut = app.count(
        "SELECT count(pg_terminate_backend(pid, 5000)) AS n FROM pg_stat_activity \
          WHERE datname = current_database() AND pid <> pg_backend_pid()",
    );
    assert!(cut >= 2, "the pool's connections");
    assert_eq!(send_due_to(&pool, switchboard::mail::PRINT).await, Ok(1));
    assert_sent_once_and_settled(&app);
}

/// One pass of the mail worker on `pool`, sending to `smtp_url`: how many
/// it sent, or why it failed.
async fn send_due_to(pool: &switchboard::db::PgPool, smtp_url: &str) -> Result<usize, String> {
    let config = switchboard::config::MailConfig {
        smtp_url: switchboard::secret::Secret::new(smtp_url.to_string()),
        from: "Switchboard <noreply@switchboard.test>".into(),
        conversation_url: None,
    };
    let mailer = switchboard::mail::Mailer::new(&config).expect("mailer");
    switchboard::mail::send_due(pool, &mailer).await.map_err(|e| e.message)
}

/// The one queued mail went once and was settled as sent.
fn assert_sent_once_and_settled(app: &TestApp) {
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM public.mail_outbox WHERE sent_at IS NOT NULL AND body = '' AND attempts = 1"
        ),
        1,
        "sent once and settled"
    );
}

/// The settle meets a connection the server closed while the mail was
/// being sent (the relay took the mail as every connection to the
/// database was cut): it goes on another, so the mail is settled as sent
/// at once. Before, the pass failed there and left the mail claimed, to
/// be sent again once its lease ran out.
#[actix_web::test]
async fn a_settle_after_the_connections_were_cut_while_sending_goes_on_another() {
    let app = crate::common::spawn_app_without_workers().await;
    let url = app.db.url.clone();
    let sink = Sink::start_with(move || {
        use diesel::{Connection, RunQueryDsl};
        let mut conn = diesel::PgConnection::establish(&url).expect("the sink's connection");
        diesel::sql_query(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
              WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .execute(&mut conn)
        .expect("cut");
    });
    let pool = app.db.pool(2);
    switchboard::mail::queue(&mut app.db.conn(), "bo@acme.test", "Hello", "Hi Bo").expect("queued");
    assert_eq!(send_due_to(&pool, &sink.url).await, Ok(1));
    assert_eq!(sink.to("bo@acme.test").len(), 1);
    assert_sent_once_and_settled(&app);
}

#[actix_web::test]
async fn printed_mail_counts_as_sent() {
    // The demo's mail (`SWITCHBOARD_SMTP_URL=print`): on standard output.
    let app = spawn_app_with_mail(switchboard::mail::PRINT).await;
    app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let r = app.call("POST", "/api/auth/password-reset", None, Some(json!({"email": "ann@acme.test"}))).await;
    assert_eq!(r.status, 202);
    eventually("the mail printed", || async {
        app.count("SELECT count(*) AS n FROM public.mail_outbox WHERE sent_at IS NOT NULL AND body = ''") == 1
    })
    .await;
}

async fn assign_of(app: &TestApp, t: &str, conversation: &str) -> Value {
    app.call("GET", &format!("/api/conversations/{conversation}"), Some(t), None).await.body["assignee_id"].clone()
}

async fn assign(app: &TestApp, t: &str, conversation: &str, to: Value) -> crate::common::Resp {
    let path = format!("/api/conversations/{conversation}");
    app.call("PATCH", &path, Some(t), Some(json!({"assignee_id": to}))).await
}

/// Acme with mail to `smtp`, Al an agent of page A, and a
/// conversation of each of `customers` (who wrote `said(i)`).
struct AlWritten {
    app: TestApp,
    ctx: crate::inbox::Ctx,
    al: String,
    al_id: String,
    page: String,
    conv: Vec<String>,
}

async fn al_written_to(smtp: &str, customers: &[&str], said: impl Fn(usize) -> String) -> AlWritten {
    use crate::inbox::{acme, agent_al, by_contact, channel_id, conversations};
    let app = spawn_app_with_mail(smtp).await;
    let ctx = acme(&app).await;
    let (al_member, al) = agent_al(&app, &ctx.admin).await;
    let al_id = al_member["user_id"].as_str().expect("id").to_string();
    let page = channel_id(&app, &ctx.admin, crate::channels::PAGE_A).await;
    let members = json!({"user_ids": [al_id]});
    let r = app.call("PUT", &format!("/api/channels/{page}/members"), Some(&ctx.admin), Some(members)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    for (i, psid) in customers.iter().enumerate() {
        let text = said(i);
        app.fake("POST", "/_fake/inbound", json!({"to": crate::channels::PAGE_A, "from": psid, "text": text})).await;
    }
    app.processed().await;
    let all = conversations(&app, &ctx.admin, "").await;
    let conv = customers.iter().map(|p| by_contact(&all, p)["id"].as_str().expect("id").to_string()).collect();
    AlWritten { app, ctx, al, al_id, page, conv }
}

/// A member who is not online hears by mail that a colleague assigned
/// them a conversation or mentioned them, or that one of theirs is overdue
/// (`inbox::notice_mail`): one mail
/// per change (a bulk one lists its conversations), none for what they
/// did themselves, none when they turned it off, none while online, and
/// no more than the hourly limit.
#[actix_web::test]
async fn a_member_not_online_is_mailed_what_was_assigned_or_mentioned() {
    use crate::inbox::{by_contact, conversations};
    let sink = Sink::start();
    let customers = ["6100000000000001", "6100000000000002", "6100000000000003", "6100000000000004"];
    let said = |i: usize| format!("Wo ist meine Bestellung Nr. {i}? 📦");
    let AlWritten { app, ctx, al, al_id, page, conv } = al_written_to(&sink.url, &customers, said).await;
    let to_al = || app.count("SELECT count(*) AS n FROM public.mail_outbox WHERE recipient = 'al@acme.test'");

    // Ann assigns Al a conversation: one mail, saying who, which customer
    // and channel, what they wrote, and where the conversation is.
    let contact = conversations(&app, &ctx.admin, "").await;
    let customer = by_contact(&contact, customers[0])["contact"]["name"].as_str().unwrap_or("a customer").to_string();
    assert_eq!(assign(&app, &ctx.admin, &conv[0], json!(al_id)).await.status, 200);
    assert_eq!(assign(&app, &ctx.admin, &conv[0], json!(al_id)).await.status, 200, "a retry changes nothing");
    assert_eq!(to_al(), 1);
    let mails = mail_to(&sink, "al@acme.test", 1).await;
    let (subject, text) = read(&mails[0]);
    let said = format!("ann@acme.test assigned you the conversation with {customer}");
    let shown = app.call("GET", &format!("/api/channels/{page}"), Some(&ctx.admin), None).await.body;
    let channel = shown["name"].as_str().expect("name");
    assert_eq!(subject, format!("{said} ({channel}) — acme inc"), "{text}");
    assert!(text.contains(&format!("{said} ({channel}).")), "{text}");
    let writer = if customer == "a customer" { "Customer" } else { customer.as_str() };
    assert!(text.contains(&format!("“{writer}: Wo ist meine Bestellung Nr. 0? 📦”")), "{text}");
    let link = link_in(&mails[0], "https://inbox.example.test/acme/conversations/");
    assert_eq!(link, format!("https://inbox.example.test/acme/conversations/{}", conv[0]));

    // Taking one oneself mails nothing.
    assert_eq!(assign(&app, &al, &conv[1], json!(al_id)).await.status, 200);
    assert_eq!(to_al(), 1);

    // A bulk change: one mail listing both.
    let bulk = json!({"ids": [conv[2], conv[3]], "assignee_id": al_id});
    let r = app.call("POST", "/api/conversations/bulk", Some(&ctx.admin), Some(bulk)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(to_al(), 2);
    let mails = mail_to(&sink, "al@acme.test", 2).await;
    let (subject, text) = read(&mails[1]);
    assert!(subject.starts_with("2 conversations need you in"), "{subject}");
    for c in &conv[2..] {
        assert!(text.contains(&format!("/acme/conversations/{c}")), "{c} in {text}");
    }

    // A mention: the note is in the mail.
    let note = json!({"text": "@Al bitte prüfen", "private": true, "mentions": [al_id], "client_id": "note-1"});
    let r = app.call("POST", &format!("/api/conversations/{}/messages", conv[0]), Some(&ctx.admin), Some(note)).await;
    assert!(r.status == 201 || r.status == 200, "{:?}", r.body);
    assert_eq!(to_al(), 3);
    let mails = mail_to(&sink, "al@acme.test", 3).await;
    let (subject, text) = read(&mails[2]);
    assert!(subject.starts_with("ann@acme.test mentioned you in the conversation with"), "{subject}");
    assert!(text.contains("“ann@acme.test: @Al bitte prüfen”"), "{text}");

    // Al turns assignment mails off (in this tenant): none for the next.
    let me = app.call("GET", "/api/me", Some(&al), None).await;
    assert_eq!(me.body["email_notifications"], json!({"assigned": true, "mentioned": true, "overdue": true}));
    let off = json!({"email_notifications": {"assigned": false}});
    let r = app.call("PATCH", "/api/me", Some(&al), Some(off)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["email_notifications"], json!({"assigned": false, "mentioned": true, "overdue": true}));
    let bad = json!({"email_notifications": {"assigned": "no"}});
    assert_eq!(app.call("PATCH", "/api/me", Some(&al), Some(bad)).await.status, 422);
    assert_eq!(assign(&app, &ctx.admin, &conv[1], Value::Null).await.status, 200);
    assert_eq!(assign(&app, &ctx.admin, &conv[1], json!(al_id)).await.status, 200);
    assert_eq!(to_al(), 3);

    // Online, Al sees the notices in the inbox and is mailed nothing.
    let mut socket = crate::realtime::ws(&app, "", Some(&al), None).await.expect("socket");
    let tenant = switchboard::ids::TenantId(app.count("SELECT id AS n FROM public.tenants WHERE slug = 'acme'"));
    let al_user = switchboard::ids::UserId(al_id.parse().expect("id"));
    eventually("Al online", || async { app.state.online.of(tenant).contains(&al_user) }).await;
    let note = json!({"text": "@Al noch einmal", "private": true, "mentions": [al_id], "client_id": "note-2"});
    let r = app.call("POST", &format!("/api/conversations/{}/messages", conv[0]), Some(&ctx.admin), Some(note)).await;
    assert!(r.status == 201 || r.status == 200, "{:?}", r.body);
    let told = crate::realtime::until(&mut socket, "notification", std::time::Duration::from_secs(10)).await;
    assert_eq!(told.expect("told")["data"]["kind"], "mention");
    assert_eq!(assign(&app, &ctx.admin, &conv[1], Value::Null).await.status, 200);
    assert_eq!(assign(&app, &ctx.admin, &conv[1], json!(al_id)).await.status, 200);
    loop {
        let told = crate::realtime::until(&mut socket, "conversation.updated", std::time::Duration::from_secs(10));
        let told = told.await.expect("the assignment shown");
        if told["data"]["id"] == json!(conv[1]) && told["data"]["assignee_id"] == json!(al_id) {
            break;
        }
    }
    assert_eq!(to_al(), 3);
    drop(socket);

    // Offline again: a conversation of Al's passes its reply target (the
    // clock's ring), and Al is mailed; one of nobody's mails nobody.
    eventually("Al gone", || async { !app.state.online.of(tenant).contains(&al_user) }).await;
    run(
        &app,
        &format!(
            "UPDATE tenant_acme.conversations SET status = 'open', waiting_since = now() - interval '2 hours',                     reply_due_at = now() - interval '1 hour', overdue_rung_for = NULL               WHERE id IN ({}, {})",
            conv[2], conv[3]
        ),
    );
    assert_eq!(assign(&app, &ctx.admin, &conv[3], Value::Null).await.status, 200);
    let ring = |tc: &mut switchboard::db::TenantConn<'_>, log: &mut switchboard::inbox::events::EventLog| {
        switchboard::inbox::waiting::ring_overdue(tc, log)
    };
    let scope = switchboard::db::TenantScope::system(tenant);
    assert_eq!(app.state.tenant_with_events(scope, ring).await.expect("rung"), 2);
    assert_eq!(to_al(), 4);
    let mails = mail_to(&sink, "al@acme.test", 4).await;
    let (subject, text) = read(&mails[3]);
    assert!(subject.starts_with("The reply to ") && subject.contains(" is overdue"), "{subject}");
    assert!(text.contains("Wo ist meine Bestellung Nr. 2?"), "{text}");
    assert!(text.contains(&format!("/acme/conversations/{}", conv[2])), "{text}");

    // Someone who left the tenant is mailed nothing of it: their
    // conversations went back to the queue, and one that still names them
    // (kept from before that was so) mails them nothing.
    let bo = json!({"email": "bo@acme.test", "role": "agent", "password": "bo-password-1"});
    let bo_id = app.call("POST", "/api/members", Some(&ctx.admin), Some(bo)).await.body["user_id"].clone();
    let bo_id = bo_id.as_str().expect("bo").to_string();
    let members = json!({"user_ids": [al_id, bo_id]});
    let r = app.call("PUT", &format!("/api/channels/{page}/members"), Some(&ctx.admin), Some(members)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(assign(&app, &ctx.admin, &conv[3], json!(bo_id)).await.status, 200);
    let to_bo = || app.count("SELECT count(*) AS n FROM public.mail_outbox WHERE recipient = 'bo@acme.test'");
    assert_eq!(to_bo(), 1, "assigned while a member");
    let r = app.call("DELETE", &format!("/api/members/{bo_id}"), Some(&ctx.admin), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(assign_of(&app, &ctx.admin, &conv[3]).await, Value::Null, "back in the queue");
    run(
        &app,
        &format!(
            "UPDATE tenant_acme.conversations SET overdue_rung_for = NULL, assignee_id = {bo_id} WHERE id = {}",
            conv[3]
        ),
    );
    assert_eq!(app.state.tenant_with_events(scope, ring).await.expect("rung"), 1);
    assert_eq!(to_bo(), 1);

    // With this hour's mails used up: nothing more.
    run(
        &app,
        "INSERT INTO public.mail_outbox (recipient, subject, body, kind, sent_at) \
         SELECT 'al@acme.test', 'earlier', '', 'notice', now() FROM generate_series(1, 26)",
    );
    let note = json!({"text": "@Al zu viel", "private": true, "mentions": [al_id], "client_id": "note-3"});
    let r = app.call("POST", &format!("/api/conversations/{}/messages", conv[0]), Some(&ctx.admin), Some(note)).await;
    assert!(r.status == 201 || r.status == 200, "{:?}", r.body);
    assert_eq!(to_al(), 30);
}

/// A notice mail stops from the mail itself (`inbox::notice_mail`): its
/// link, also its `List-Unsubscribe` header for mail apps' one-click
/// button (RFC 8058), opens a page that changes nothing until asked; a
/// `POST` to it turns off that member's notice mail of that tenant of the
/// kinds the mail carried (or all, `&all=true`), once or again; a link not
/// ours is 404; settings turn them on again.
/// A notice mail still unsent (an SMTP server down) is withdrawn, not
/// sent hours later, when its member leaves the tenant (also when the
/// worker finds them gone: removed as it was queued), when the tenant is
/// dropped, and when a conversation it quotes is erased or purged
/// (`mail::withdraw`).
#[actix_web::test]
async fn a_notice_mail_unsent_is_withdrawn_when_its_member_or_customer_goes() {
    let url = closed_smtp_url();
    let customers = ["6400000000000001", "6400000000000002"];
    let AlWritten { app, ctx, al_id, conv, page, .. } =
        al_written_to(&url, &customers, |_| "Mi pedido 📦".into()).await;
    let tenant = app.count("SELECT id AS n FROM public.tenants WHERE slug = 'acme'");
    assert_eq!(assign(&app, &ctx.admin, &conv[0], json!(al_id)).await.status, 200);
    let about_al = format!(
        "tenant_id = {tenant} AND user_id = {al_id} AND conversation_ids = ARRAY[{}]::bigint[] \
           AND recipient = 'al@acme.test'",
        conv[0]
    );
    eventually("Al's mail tried once and planned again", || async {
        app.count(&format!(
            "SELECT count(*) AS n FROM public.mail_outbox WHERE {about_al} AND attempts = 1 \
               AND failed_at IS NULL AND sent_at IS NULL AND body LIKE '%Mi pedido%'"
        )) == 1
    })
    .await;
    let withdrawn = |why: &str| {
        app.count(&format!(
            "SELECT count(*) AS n FROM public.mail_outbox WHERE failed_at IS NOT NULL AND sent_at IS NULL \
               AND body = '' AND list_unsubscribe IS NULL AND last_error = '{why}'"
        ))
    };
    let member_left = switchboard::mail::MEMBER_LEFT;

    // Al is removed: the mail is given up at once, saying why, its
    // preview gone.
    let r = app.call("DELETE", &format!("/api/members/{al_id}"), Some(&ctx.admin), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(app.count(&format!("SELECT count(*) AS n FROM public.mail_outbox WHERE {about_al}")), 1);
    assert_eq!(withdrawn(member_left), 1);

    // One written as the removal went (after it looked) is withdrawn when
    // the worker comes to it, never tried; mail about a member still there
    // and mail about no one (a reset) are tried.
    let ann = app.count("SELECT id AS n FROM public.users WHERE email = 'ann@acme.test'");
    let later = "now() + interval '1 day'";
    run(
        &app,
        &format!(
            "INSERT INTO public.mail_outbox (recipient, subject, body, kind, tenant_id, user_id, conversation_ids) \
             VALUES ('al@acme.test', 'late', 'Mi pedido', 'notice', {tenant}, {al_id}, ARRAY[{c0}]), \
                    ('ann@acme.test', 'hers', 'x', 'notice', {tenant}, {ann}, ARRAY[]::bigint[]), \
                    ('al@acme.test', 'reset', 'y', 'account', NULL, NULL, NULL); \
             INSERT INTO public.mail_outbox (recipient, subject, body, kind, tenant_id, user_id, conversation_ids, \
                                             next_attempt_at) \
             VALUES ('ann@acme.test', 'quotes one erased', 'Mi pedido', 'notice', {tenant}, {ann}, ARRAY[{c0}, {c1}], {later}), \
                    ('ann@acme.test', 'quotes one purged', 'Mi pedido', 'notice', {tenant}, {ann}, ARRAY[{c0}], {later})",
            c0 = conv[0],
            c1 = conv[1],
        ),
    );
    let mailer = switchboard::mail::Mailer::new(app.config.mail.as_ref().expect("mail on")).expect("mailer");
    let _ = switchboard::mail::send_due(&app.pool, &mailer).await;
    eventually("the late one withdrawn, the others tried", || async {
        withdrawn(member_left) == 2
            && app.count(
                "SELECT count(*) AS n FROM public.mail_outbox WHERE subject IN ('hers', 'reset') \
                   AND attempts = 1 AND failed_at IS NULL AND last_error IS NOT NULL",
            ) == 2
    })
    .await;
    assert_eq!(app.count("SELECT count(*) AS n FROM public.mail_outbox WHERE subject = 'late' AND attempts > 0"), 0);

    // The customer of one conversation quoted is erased: that mail goes.
    let shown = app.call("GET", &format!("/api/conversations/{}", conv[1]), Some(&ctx.admin), None).await;
    let contact = shown.body["contact"]["id"].as_str().expect("contact id").to_string();
    let r = app.call("DELETE", &format!("/api/contacts/{contact}"), Some(&ctx.admin), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let erased = "withdrawn: the customer was erased";
    assert_eq!(withdrawn(erased), 1);
    let left = |subject: &str| {
        app.count(&format!(
            "SELECT count(*) AS n FROM public.mail_outbox WHERE subject = '{subject}' AND failed_at IS NULL"
        ))
    };
    assert_eq!(left("quotes one erased"), 0);
    assert_eq!(left("quotes one purged"), 1, "another conversation's mail stays");

    // The channel of the other purged: its mail goes.
    let r = app.call("DELETE", &format!("/api/channels/{page}?purge=true"), Some(&ctx.admin), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(withdrawn("withdrawn: the channel was purged"), 1);
    assert_eq!(left("quotes one purged"), 0);
    assert_eq!(left("hers"), 1, "a mail quoting nothing stays");

    // The tenant dropped: what it still had to send about its members goes
    // with it; account mail stays.
    let out = app.db.command(&["tenant", "drop", "acme", "--yes"]).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(withdrawn("withdrawn: the tenant was dropped"), 1);
    assert_eq!(left("hers"), 0);
    assert_eq!(left("reset"), 1);
}

/// A notice mail not yet sent is withdrawn once its member can no longer
/// see a conversation it quotes: an admin made an agent not listed on its
/// channel, or an agent taken off the channel's list. An admin taken off a
/// list still sees every channel, and their mail stays; so does another
/// member's, and one quoting nothing.
#[actix_web::test]
async fn a_notice_mail_unsent_is_withdrawn_when_its_member_no_longer_sees_the_conversation() {
    let url = closed_smtp_url();
    let customers = ["6450000000000001", "6450000000000002"];
    let AlWritten { app, ctx, al_id, conv, page, .. } = al_written_to(&url, &customers, |_| "Hallo? 🧾".into()).await;
    let tenant = app.count("SELECT id AS n FROM public.tenants WHERE slug = 'acme'");
    let ann = app.count("SELECT id AS n FROM public.users WHERE email = 'ann@acme.test'");
    let queue = |subject: &str, to: (&str, String), quoted: String| {
        run(
            &app,
            &format!(
                "INSERT INTO public.mail_outbox (recipient, subject, body, kind, tenant_id, user_id, conversation_ids, \
                                                 next_attempt_at) \
                 VALUES ('{}', '{subject}', 'Hallo?', 'notice', {tenant}, {}, ARRAY[{quoted}]::bigint[], \
                         now() + interval '1 day')",
                to.0, to.1
            ),
        )
    };
    let al = || ("al@acme.test", al_id.clone());
    queue("one", al(), conv[0].clone());
    queue("both", al(), format!("{}, {}", conv[0], conv[1]));
    queue("nothing", al(), String::new());
    queue("ann", ("ann@acme.test", ann.to_string()), conv[0].clone());
    let left = |subject: &str| {
        app.count(&format!(
            "SELECT count(*) AS n FROM public.mail_outbox WHERE subject = '{subject}' AND failed_at IS NULL"
        ))
    };
    let withdrawn = || {
        app.count(&format!(
            "SELECT count(*) AS n FROM public.mail_outbox WHERE failed_at IS NOT NULL AND body = '' \
               AND last_error = '{}'",
            switchboard::mail::NO_LONGER_SEEN
        ))
    };
    let role = |role: &str| {
        let (app, admin, path) = (&app, ctx.admin.clone(), format!("/api/members/{al_id}"));
        let body = json!({"role": role});
        async move {
            let r = app.call("PATCH", &path, Some(&admin), Some(body)).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
    };
    let list = |ids: Value| {
        let (app, admin, path) = (&app, ctx.admin.clone(), format!("/api/channels/{page}/members"));
        async move {
            let r = app.call("PUT", &path, Some(&admin), Some(json!({"user_ids": ids}))).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
    };

    // Al made an admin and taken off the page's list still sees it.
    role("admin").await;
    list(json!([])).await;
    assert_eq!(withdrawn(), 0);
    // Made an agent again, listed nowhere: his mail quoting the page's
    // conversations goes.
    role("agent").await;
    assert_eq!(withdrawn(), 2);
    assert_eq!((left("one"), left("both"), left("nothing"), left("ann")), (0, 0, 1, 1));

    // Listed again, then taken off the list.
    list(json!([al_id])).await;
    queue("again", al(), conv[1].clone());
    list(json!([])).await;
    assert_eq!(withdrawn(), 3);
    assert_eq!((left("again"), left("nothing"), left("ann")), (0, 1, 1));
}

#[actix_web::test]
async fn a_notice_mail_stops_with_one_click_from_the_mail() {
    let sink = Sink::start();
    let customers = ["6300000000000001", "6300000000000002"];
    let AlWritten { app, ctx, al, al_id, conv, .. } = al_written_to(&sink.url, &customers, |_| "سلام".into()).await;
    let to_al = || app.count("SELECT count(*) AS n FROM public.mail_outbox WHERE recipient = 'al@acme.test'");
    assert_eq!(assign(&app, &ctx.admin, &conv[0], json!(al_id)).await.status, 200);
    let mails = mail_to(&sink, "al@acme.test", 1).await;

    // The header, unfolded, names the same link as the mail's last line.
    let headers = mails[0].data.split("\r\n\r\n").next().unwrap_or_default().replace("\r\n ", " ");
    let header = |name: &str| {
        let start = format!("{name}: ");
        headers.lines().find_map(|l| l.strip_prefix(start.as_str())).map(str::to_string)
    };
    assert_eq!(header("List-Unsubscribe-Post").as_deref(), Some("List-Unsubscribe=One-Click"), "{headers}");
    let listed = header("List-Unsubscribe").unwrap_or_else(|| panic!("no List-Unsubscribe in {headers}"));
    let url = listed.trim_start_matches('<').trim_end_matches('>').to_string();
    assert!(url.starts_with(&app.url("/unsubscribe?token=")), "{url}");
    let (_, text) = read(&mails[0]);
    assert!(text.trim_end().ends_with(&url), "{text}");
    let prefs = || async { app.call("GET", "/api/me", Some(&al), None).await.body["email_notifications"].clone() };
    let all_on = json!({"assigned": true, "mentioned": true, "overdue": true});

    // Opening the link shows the page and stops nothing.
    let opened = app.client.get(&url).send().await.expect("page");
    assert_eq!(opened.status(), 200);
    let page = opened.text().await.expect("html");
    assert!(page.contains("Stop mails like this one") && page.contains("Stop all these mails"), "{page}");
    assert_eq!(prefs().await, all_on);

    // A mail app's one-click POST stops the kind of mail it came in (an
    // assignment); again, the same.
    let one_click = |url: String| {
        let client = app.client.clone();
        async move {
            let r = client
                .post(&url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body("List-Unsubscribe=One-Click")
                .send()
                .await
                .expect("post");
            (r.status().as_u16(), r.json::<Value>().await.expect("json"))
        }
    };
    let done = json!({"unsubscribed": true, "workspace": "acme inc", "stopped": ["assigned"]});
    assert_eq!(one_click(url.clone()).await, (200, done.clone()));
    assert_eq!(prefs().await, json!({"assigned": false, "mentioned": true, "overdue": true}));
    assert_eq!(one_click(url.clone()).await, (200, done));
    assert_eq!(assign(&app, &ctx.admin, &conv[1], json!(al_id)).await.status, 200);
    let mention = |n: &str| {
        let note = json!({"text": "@Al?", "private": true, "mentions": [al_id], "client_id": format!("note-{n}")});
        let (app, admin, path) = (&app, ctx.admin.clone(), format!("/api/conversations/{}/messages", conv[0]));
        async move {
            let r = app.call("POST", &path, Some(&admin), Some(note)).await;
            assert!(r.status == 201 || r.status == 200, "{:?}", r.body);
        }
    };
    mention("u1").await;
    let mails = mail_to(&sink, "al@acme.test", 2).await;
    assert_eq!(to_al(), 2, "the assignment was not mailed, the mention was");
    // The page's other button stops them all.
    let (_, text) = read(&mails[1]);
    let second = text.lines().rev().find(|l| l.contains("/unsubscribe?token=")).expect("link").trim().to_string();
    let everything = json!({"unsubscribed": true, "workspace": "acme inc",
                            "stopped": ["assigned", "mentioned", "overdue"]});
    assert_eq!(one_click(format!("{second}&all=true")).await, (200, everything.clone()));
    assert_eq!(prefs().await, json!({"assigned": false, "mentioned": false, "overdue": false}));
    mention("u2").await;
    assert_eq!(to_al(), 2, "nothing more mailed");
    let r = app.call("POST", &format!("{}&all=maybe", second.trim_start_matches(&app.url(""))), None, None).await;
    assert_eq!(code(&r), (400, "invalid_query"), "{:?}", r.body);

    // A link mailed before links named their kinds stops all three.
    let on = json!({"email_notifications": {"assigned": true, "mentioned": true, "overdue": true}});
    assert_eq!(app.call("PATCH", "/api/me", Some(&al), Some(on)).await.status, 200);
    let tenant = app.count("SELECT id AS n FROM public.tenants WHERE slug = 'acme'");
    let al_number: i64 = al_id.parse().expect("al's id");
    let older = switchboard::signed::sign(&app.state.unsubscribe_key, &json!({"u": al_number, "t": tenant}));
    assert_eq!(one_click(app.url(&format!("/unsubscribe?token={older}"))).await, (200, everything));
    assert_eq!(prefs().await, json!({"assigned": false, "mentioned": false, "overdue": false}));

    // A link not ours, or none: 404, and nothing changes.
    let token = url.split("token=").nth(1).expect("token").to_string();
    let (payload, _) = token.split_once('.').expect("signed");
    for path in [
        format!("/unsubscribe?token={payload}.AAAA"),
        format!("/unsubscribe?token={payload}"),
        "/unsubscribe".to_string(),
    ] {
        let r = app.call("POST", &path, None, None).await;
        assert_eq!(code(&r), (404, "unsubscribe_link_not_found"), "{path}: {:?}", r.body);
    }

    // Settings turn them on again.
    let on = json!({"email_notifications": {"assigned": true, "mentioned": true, "overdue": true}});
    assert_eq!(app.call("PATCH", "/api/me", Some(&al), Some(on)).await.status, 200);
    assert_eq!(assign(&app, &ctx.admin, &conv[1], Value::Null).await.status, 200);
    assert_eq!(assign(&app, &ctx.admin, &conv[1], json!(al_id)).await.status, 200);
    assert_eq!(to_al(), 3);
}

/// `switchboard mail test --to ADDRESS`: an operator checks the settings
/// with one mail sent at once, and hears what the server said.
#[test]
fn an_operator_checks_the_mail_settings_with_one_mail() {
    let sink = Sink::start();
    let run = |smtp: Option<&str>, to: &str| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command.args(["mail", "test", "--to", to]).env_remove("RUST_LOG").current_dir(std::env::temp_dir());
        for name in ["SWITCHBOARD_SMTP_URL", "SWITCHBOARD_MAIL_FROM", "SWITCHBOARD_PUBLIC_URL", "SWITCHBOARD_BIND"] {
            command.env_remove(name);
        }
        if let Some(url) = smtp {
            command.env("SWITCHBOARD_SMTP_URL", url).env("SWITCHBOARD_PUBLIC_URL", "https://inbox.example.test");
        }
        let out = command.output().expect("run switchboard");
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), said)
    };
    let (ok, said) = run(Some(&sink.url), "ops@acme.test");
    assert!(ok && said.contains("sent, from Switchboard <no-reply@inbox.example.test>"), "{said}");
    let got = sink.to("ops@acme.test");
    assert_eq!(got.len(), 1, "sent at once, not queued");
    let (subject, body) = read(&got[0]);
    assert_eq!(subject, "Switchboard mail test");
    assert!(body.contains("https://inbox.example.test"), "{body}");
    let (ok, said) = run(Some(&sink.url), "refused@acme.test");
    assert!(!ok && said.contains("refused for good") && said.contains("550"), "{said}");
    let (ok, said) = run(Some("smtp://127.0.0.1:9"), "ops@acme.test");
    assert!(!ok && said.contains("not sent"), "{said}");
    let (ok, said) = run(None, "ops@acme.test");
    assert!(!ok && said.contains("mail is off"), "{said}");
    let (ok, said) = run(Some("carrier-pigeon"), "ops@acme.test");
    assert!(!ok && said.contains("SWITCHBOARD_SMTP_URL"), "{said}");
}
