//! Mail (`mail`): invitations mailed, a forgotten password reset by mail,
//! and what the worker does with an SMTP server that refuses or is gone.
//! The SMTP server is [`Sink`], a small one that keeps what it is sent (a
//! stand-in for the relay an operator names, as the fake Meta is Meta's).

use serde_json::json;
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
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("smtp://127.0.0.1:{}", listener.local_addr().expect("addr").port());
        let mails: Arc<Mutex<Vec<Received>>> = Arc::default();
        let kept = mails.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || Sink::serve(stream, &kept));
            }
        });
        Sink { url, mails }
    }

    fn serve(stream: std::net::TcpStream, kept: &Mutex<Vec<Received>>) {
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
    let r = ask("Ann@ACME.test").await;
    assert_eq!((r.status, &r.body), (202, &json!({})));
    let r = ask("nobody@acme.test").await;
    assert_eq!((r.status, &r.body), (202, &json!({})));
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
    let bo = json!({"email": "bo@acme.test", "role": "agent"});
    let r = app.call("POST", "/api/invitations", Some(&admin), Some(bo)).await;
    assert_eq!((r.status, &r.body["mailed"]), (201, &json!(false)), "{:?}", r.body);
    assert_eq!(app.count("SELECT count(*) AS n FROM public.mail_outbox"), 0);
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

#[actix_web::test]
async fn a_server_not_reached_is_tried_again_later() {
    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("smtp://127.0.0.1:{}", closed.local_addr().expect("addr").port());
    drop(closed);
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
