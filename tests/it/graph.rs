//! The Graph client against the fake Meta over HTTP: paging, retries of
//! transient failures only, and errors that never carry tokens; and the
//! connections under it, kept by the servers longer than clients keep them.

use serde_json::json;
use std::time::Duration;

use switchboard::meta::{GraphClient, GraphError};
use switchboard::secret::Secret;

use crate::common::{spawn_app, status_on};

#[actix_web::test]
async fn paging_retries_and_classification() {
    let app = spawn_app().await;
    let pages: Vec<_> = (0..130).map(|i| json!({"id": format!("5000{i:05}"), "name": format!("Page {i}")})).collect();
    let created = app.fake("POST", "/_fake/users", json!({"pages": pages})).await;
    let token = Secret::new(created["user"]["access_token"].as_str().expect("token").to_string());
    let graph = GraphClient::new(&app.config.meta).with_retry(3, Duration::from_millis(10));

    // All 130 pages across paging.
    let all = graph.accounts(&token).await.expect("accounts");
    assert_eq!(all.len(), 130);
    assert_eq!(all[129].name, "Page 129");

    // Two 500s, then success: retried.
    app.fake("POST", "/_fake/errors", json!({"path": "/me", "status": 500, "error": {"code": 2, "message": "Service temporarily unavailable"}, "times": 2})).await;
    assert!(graph.me(&token).await.is_ok());
    // A rate limit is not retried and is classified.
    app.fake(
        "POST",
        "/_fake/errors",
        json!({"path": "/me", "error": {"code": 613, "message": "Calls to this api have exceeded the rate limit."}}),
    )
    .await;
    let before = app.fake("GET", "/_fake/requests", json!({})).await["items"].as_array().map(|a| a.len()).unwrap_or(0);
    let err = graph.me(&token).await.expect_err("rate limited");
    assert!(matches!(err, GraphError::RateLimited { code: 613, .. }), "{err:?}");
    let after = app.fake("GET", "/_fake/requests", json!({})).await["items"].as_array().map(|a| a.len()).unwrap_or(0);
    assert_eq!(after - before, 1, "not retried");
    // An expired token: 190/463, no retry, and the token is in no message.
    app.fake("POST", "/_fake/tokens/expire", json!({"token": token.expose()})).await;
    let err = graph.me(&token).await.expect_err("expired");
    assert!(matches!(err, GraphError::TokenInvalid { code: 190, subcode: Some(463), .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(token.expose()));
    // Slow answers time out as network errors after retries; nothing leaks the secret.
    let slow = GraphClient::new(&app.config.meta).with_retry(1, Duration::from_millis(1));
    let bad_code = slow.exchange_code("no-such-code", Some("http://x")).await.expect_err("bad code");
    assert!(!format!("{bad_code:?}").contains("fake_app_secret"), "{bad_code:?}");
    // WhatsApp media: metadata, then the bytes with the same token only.
    let wa = app.fake("POST", "/_fake/users", json!({"wabas": [{"phone_numbers": [{"id": "555000111"}]}]})).await;
    let wa_token = Secret::new(wa["wabas"][0]["access_token"].as_str().expect("token").to_string());
    let m = app
        .fake(
            "POST",
            "/_fake/media",
            json!({"phone_number_id": "555000111", "mime_type": "image/png", "data": "PNGDATA"}),
        )
        .await;
    let meta = graph.media(m["id"].as_str().expect("id"), &wa_token).await.expect("media");
    assert_eq!(meta["mime_type"], "image/png");
    let url = meta["url"].as_str().expect("url");
    let download = graph.download_stream(url, &wa_token, None).await.expect("download");
    let bytes: Vec<bytes::Bytes> = futures_util::TryStreamExt::try_collect(download.body).await.expect("bytes");
    assert_eq!(bytes.concat(), b"PNGDATA");
    assert!(graph.download_stream(url, &token, None).await.is_err(), "another account's token");
    // The request log never stores tokens or secrets.
    let log = app.fake("GET", "/_fake/requests", json!({})).await.to_string();
    assert!(!log.contains(token.expose()) && !log.contains("fake_app_secret_0123456789abcdef"));
}

/// Whoever closes an idle connection races the other side's next request
/// on it. Our server and the fake Meta keep one longer than actix's 5 s
/// (`http::KEEP_ALIVE`), longer than the clients in front of them keep
/// theirs (a load balancer's 60 s, the Graph client's 30 s), so the
/// clients let go first.
#[actix_web::test]
async fn an_idle_connection_is_kept_longer_than_clients_keep_theirs() {
    let app = spawn_app().await;
    let open = |base: &str| {
        let addr = base.trim_start_matches("http://").to_string();
        async move { tokio::net::TcpStream::connect(addr).await.expect("connect") }
    };
    let (mut server, mut fake) = (open(&app.base).await, open(&app.fake_base).await);
    assert_eq!(status_on(&mut server, "/healthz").await, Some(200));
    assert_eq!(status_on(&mut fake, "/_fake/requests").await, Some(200));
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(status_on(&mut server, "/healthz").await, Some(200), "the server kept the connection");
    assert_eq!(status_on(&mut fake, "/_fake/requests").await, Some(200), "the fake Meta kept the connection");
    // `SWITCHBOARD_KEEP_ALIVE_SECS` sets it (above a balancer's own).
    let serve = crate::realtime::Serve::start_with(&app, &[("SWITCHBOARD_KEEP_ALIVE_SECS", "1")]).await;
    let mut short = open(&serve.base).await;
    assert_eq!(status_on(&mut short, "/healthz").await, Some(200));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status_on(&mut short, "/healthz").await, None, "closed after its 1 s");
}

/// A message to a customer that went out and got no answer (a timeout, a
/// lost connection) may have reached them: the Graph client does not send
/// it again at once (the send job tries later, once an echo could have
/// marked it sent). A lookup with no answer is asked again, and a send
/// that never reached Meta is another failure, to be tried again.
#[actix_web::test]
async fn a_send_that_got_no_answer_is_not_made_again_at_once() {
    let app = spawn_app().await;
    let made = app
        .fake(
            "POST",
            "/_fake/users",
            json!({"pages": [{"id": "5100000000000077", "name": "Late Page"}],
                   "wabas": [{"phone_numbers": [{"id": "555000222"}]}]}),
        )
        .await;
    let secret = |v: &serde_json::Value| Secret::new(v.as_str().expect("token").to_string());
    let (user_token, page_token) = (secret(&made["user"]["access_token"]), secret(&made["pages"][0]["access_token"]));
    let number_token = secret(&made["wabas"][0]["access_token"]);
    let graph = GraphClient::new(&app.config.meta)
        .with_retry(3, Duration::from_millis(10))
        .with_timeout(Duration::from_millis(300));
    let calls = |path: &'static str| {
        let app = &app;
        async move {
            let log = app.fake("GET", "/_fake/requests", json!({})).await;
            log["items"].as_array().expect("items").iter().filter(|r| r["path"] == path).count()
        }
    };
    // Meta takes each call at once and answers after the client gave up.
    app.fake("POST", "/_fake/errors", json!({"path": "/", "delay_ms": 1500, "answer_late": true, "times": 20})).await;
    let err = graph
        .send_text("5100000000000077", &page_token, "7392015648120394", "only once", None, "sb:1")
        .await
        .expect_err("no answer in time");
    assert!(matches!(err, GraphError::NoAnswer(_)) && err.is_transient(), "{err:?}");
    let err = graph
        .whatsapp_text("555000222", &number_token, "351910000001", "only once", Default::default())
        .await
        .expect_err("late");
    assert!(matches!(err, GraphError::NoAnswer(_)), "{err:?}");
    assert_eq!(calls("/5100000000000077/messages").await, 1, "the page's send was made once");
    assert_eq!(calls("/555000222/messages").await, 1, "the number's send was made once");
    // A lookup is asked again: every attempt met the late answer.
    assert!(matches!(graph.me(&user_token).await, Err(GraphError::NoAnswer(_))));
    assert_eq!(calls("/me").await, 3, "asked three times");
    // Nothing listens there: never reached, so not "no answer".
    let mut closed = app.config.meta.clone();
    closed.graph_url = "http://127.0.0.1:9".into();
    let nowhere = GraphClient::new(&closed).with_retry(1, Duration::from_millis(1));
    let err = nowhere.send_text("5100000000000077", &page_token, "7392015648120394", "x", None, "sb:2").await;
    assert!(matches!(err, Err(GraphError::Network(_))), "{err:?}");
}
