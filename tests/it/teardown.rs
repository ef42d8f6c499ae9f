//! How a socket ends at the TCP level, seen from a raw client that does
//! exactly what it is told: once the closing handshake is done the server
//! closes the connection itself (RFC 6455 §7.1.1: clients wait for that),
//! and a connection whose client stopped reading is let go, not held with
//! its send buffer full for as long as the client stays connected.

use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{spawn_app, spawn_app_without_workers, token, TestApp};
use crate::realtime::{append_in, Serve};

/// A WebSocket client written by hand: the upgrade, then raw frames.
pub(crate) struct RawClient {
    tcp: TcpStream,
    /// Bytes read and not yet parsed into frames.
    buf: Vec<u8>,
}

/// A server frame: its opcode and payload.
pub(crate) struct RawFrame {
    pub(crate) opcode: u8,
    pub(crate) payload: Vec<u8>,
}

impl RawClient {
    /// Connects to `base` with a bearer token; `receive_buffer` shrinks the
    /// socket's receive buffer before connecting (a client that reads
    /// nothing then stalls the server's writes sooner).
    async fn connect(base: &str, bearer: &str, receive_buffer: Option<u32>) -> RawClient {
        RawClient::connect_to(base, "/ws", bearer, receive_buffer).await
    }

    /// As [`RawClient::connect`], to `path` (with its query).
    pub(crate) async fn connect_to(base: &str, path: &str, bearer: &str, receive_buffer: Option<u32>) -> RawClient {
        let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().expect("address");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(size) = receive_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let mut tcp = socket.connect(addr).await.expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {bearer}\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.expect("upgrade request");
        // Byte by byte up to the blank line: nothing of the frames is taken.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let n =
                tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut byte)).await.expect("head").expect("read");
            assert_eq!(n, 1, "connection ended in the upgrade: {}", String::from_utf8_lossy(&head));
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        RawClient { tcp, buf: Vec::new() }
    }

    fn local_port(&self) -> u16 {
        self.tcp.local_addr().expect("local address").port()
    }

    /// The next whole frame, or `None` at the end of the stream or after `wait`.
    pub(crate) async fn frame(&mut self, wait: Duration) -> Option<RawFrame> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(f) = self.parse() {
                return Some(f);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout(left, self.tcp.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Server frames are unmasked: a two-byte header, then a 16- or 64-bit
    /// length when the 7-bit one says so.
    fn parse(&mut self) -> Option<RawFrame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let (len, at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize, 10),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b.len() < at + len {
            return None;
        }
        let frame = RawFrame { opcode: b[0] & 0x0f, payload: b[at..at + len].to_vec() };
        self.buf.drain(..at + len);
        Some(frame)
    }

    /// Frames until a close frame, whose code it returns.
    async fn until_close(&mut self, wait: Duration) -> u16 {
        loop {
            let f = self.frame(wait).await.expect("a close frame");
            if f.opcode == 0x8 {
                assert!(f.payload.len() >= 2, "a close frame with a code");
                return u16::from_be_bytes([f.payload[0], f.payload[1]]);
            }
        }
    }

    /// Sends a close frame with `code`.
    async fn send_close(&mut self, code: u16) {
        self.send_frame(0x88, &code.to_be_bytes()).await;
    }

    /// Sends one frame, its first byte (FIN and opcode) as given and its
    /// payload (under 126 bytes) masked as a client must.
    async fn send_frame(&mut self, first: u8, payload: &[u8]) {
        assert!(payload.len() < 126, "a short frame");
        let mask = [0x1f, 0x2e, 0x3d, 0x4c];
        let mut frame = vec![first, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.tcp.write_all(&frame).await.expect("frame");
    }

    /// Whether the server ends the stream (EOF or reset) within `wait`,
    /// whatever it sends before.
    async fn ends_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut chunk = [0u8; 16 * 1024];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match tokio::time::timeout(left, self.tcp.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
        false
    }
}

/// Whether this machine's TCP table holds a connection from local port
/// `server` to `client` that still has data to deliver or a FIN to send
/// (ESTABLISHED, FIN_WAIT1, CLOSE_WAIT or LAST_ACK).
fn server_holds(server: u16, client: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = |address: &str| address.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3
            && port(fields[1]) == Some(server)
            && port(fields[2]) == Some(client)
            && matches!(fields[3], "01" | "04" | "08" | "09")
    })
}

async fn owner_token(app: &TestApp) -> String {
    token(&app.signup("acme", "ann@acme.test", "ann-password-1").await, "access_token")
}

/// RFC 6455 §7.1.1: after the closing handshake the server closes TCP, and
/// clients (browsers, most libraries) wait for it before they report the
/// socket closed. actix drains the stream for up to its disconnect timeout
/// first (1 s, `http::build_server`); a server that waited for the client
/// instead would leave both waiting (as actix does when that timeout is
/// under 500 ms: see there). Both ways round: the client closes, and the
/// server closes (4403).
#[actix_web::test]
async fn the_server_closes_tcp_once_the_closing_handshake_is_done() {
    let app = spawn_app().await;
    let admin = owner_token(&app).await;

    let mut client = RawClient::connect(&app.base, &admin, None).await;
    let hello = client.frame(Duration::from_secs(5)).await.expect("hello");
    assert!(String::from_utf8_lossy(&hello.payload).contains("\"hello\""));
    client.send_close(1000).await;
    let asked = Instant::now();
    assert_eq!(client.until_close(Duration::from_secs(5)).await, 1000, "the close is answered");
    assert!(client.ends_within(Duration::from_secs(5)).await, "the server did not close the connection");
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(3), "TCP closed {took:?} after the client's close frame");

    // The server closes: a member removed while connected.
    let r = app
        .call(
            "POST",
            "/api/members",
            Some(&admin),
            Some(json!({"email": "xavi@acme.test", "role": "agent", "password": "xavi-password-1"})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let xavi = r.body["user_id"].as_str().expect("user id").to_string();
    let agent = token(&app.login("xavi@acme.test", "xavi-password-1", "acme").await, "access_token");
    let mut client = RawClient::connect(&app.base, &agent, None).await;
    client.frame(Duration::from_secs(5)).await.expect("hello");
    let r = app.call("DELETE", &format!("/api/members/{xavi}"), Some(&admin), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(client.until_close(Duration::from_secs(5)).await, 4403);
    client.send_close(4403).await;
    let answered = Instant::now();
    assert!(client.ends_within(Duration::from_secs(5)).await, "the server did not close the connection");
    let took = answered.elapsed();
    assert!(took < Duration::from_secs(3), "TCP closed {took:?} after the client answered the close");
}

/// A client that stops reading fills the server's send buffer (megabytes);
/// its session is closed (silent past the timeout, or 4408 when its queue
/// overflows), but the close frame waits behind the unread bytes. The
/// connection must still end within about the silence timeout, not when
/// the client chooses to read or leave. Timeouts shortened through the
/// configuration, on a `serve` process of its own.
#[actix_web::test]
async fn a_connection_whose_client_stopped_reading_is_let_go() {
    let app = spawn_app_without_workers().await;
    let admin = owner_token(&app).await;
    let serve =
        Serve::start_with(&app, &[("SWITCHBOARD_WS_PING_SECS", "1"), ("SWITCHBOARD_WS_TIMEOUT_SECS", "2")]).await;
    let server_port = serve.base.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).expect("port");
    let stalled = RawClient::connect(&serve.base, &admin, Some(4096)).await;
    let client_port = stalled.local_port();
    assert!(server_holds(server_port, client_port), "the server's side of the connection is seen");
    // ~6 MB of events, more than the kernel buffers on both sides; the
    // client reads none of it.
    let pool = app.pool.clone();
    let writer = std::thread::spawn(move || {
        for _ in 0..75 {
            append_in(&pool, 20, 4000);
        }
    });
    tokio::task::spawn_blocking(move || writer.join()).await.expect("join").expect("writer");
    let deadline = Instant::now() + Duration::from_secs(20);
    while server_holds(server_port, client_port) {
        assert!(Instant::now() < deadline, "the server still holds the stalled connection 20 s on");
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
    drop(stalled);
}

/// A connection that ends under its session, no close frame from either
/// side (the client's network dropped, or the server let go of a client
/// that stopped reading), is counted apart from those closed properly:
/// `switchboard_ws_unclosed_total`. On a `serve` process of its own, whose
/// counters no other test moves.
#[actix_web::test]
async fn a_connection_ended_without_a_close_frame_is_counted() {
    let app = spawn_app_without_workers().await;
    let admin = owner_token(&app).await;
    let serve = Serve::start_with(&app, &[]).await;
    let counted = |name: &'static str| {
        let (client, url) = (app.client.clone(), format!("{}/metrics", serve.base));
        async move {
            let text = client.get(url).send().await.expect("metrics").text().await.expect("text");
            text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<i64>().ok())
        }
    };
    // Closed properly, by the client.
    let mut closed = RawClient::connect(&serve.base, &admin, None).await;
    closed.frame(Duration::from_secs(5)).await.expect("hello");
    closed.send_close(1000).await;
    assert_eq!(closed.until_close(Duration::from_secs(5)).await, 1000);
    assert!(closed.ends_within(Duration::from_secs(5)).await, "the server did not close the connection");
    // Dropped: the TCP connection ends with no close frame.
    let mut dropped = RawClient::connect(&serve.base, &admin, None).await;
    dropped.frame(Duration::from_secs(5)).await.expect("hello");
    drop(dropped);
    crate::common::eventually("both sessions ended", || async { counted("switchboard_ws_open").await == Some(0) })
        .await;
    assert_eq!(counted("switchboard_ws_connections_total").await, Some(2));
    assert_eq!(counted("switchboard_ws_unclosed_total").await, Some(1), "only the dropped one");
}

/// RFC 6455 §7.4.1: text that is not UTF-8 is answered with 1007, whether
/// it came in one frame or in fragments; any other malformed frame (here a
/// continuation with nothing to continue) with 1002. Libraries such as awc
/// cannot send such text, so these frames are written by hand.
#[actix_web::test]
async fn text_that_is_not_utf8_is_closed_with_1007() {
    let app = spawn_app().await;
    let admin = owner_token(&app).await;
    let not_utf8: &[u8] = b"{\"type\": \"ping\", \"note\": \"\xff\xfe\"}";
    let cut_mid_character = "{\"type\": \"ping\", \"note\": \"ol\u{e1}\"}".as_bytes();
    // What is sent, as frames (first byte, payload), and the code it gets.
    type Frames<'a> = Vec<(u8, &'a [u8])>;
    let cases: [(&str, Frames, u16); 4] = [
        ("one frame", vec![(0x81, not_utf8)], 1007),
        ("fragments", vec![(0x01, &not_utf8[..5]), (0x80, &not_utf8[5..])], 1007),
        ("a character cut short at the end", vec![(0x81, &cut_mid_character[..cut_mid_character.len() - 3])], 1007),
        ("a continuation of nothing", vec![(0x80, b"{}")], 1002),
    ];
    for (what, frames, code) in cases {
        let mut client = RawClient::connect(&app.base, &admin, None).await;
        client.frame(Duration::from_secs(5)).await.expect("hello");
        for (first, payload) in frames {
            client.send_frame(first, payload).await;
        }
        assert_eq!(client.until_close(Duration::from_secs(5)).await, code, "{what}");
    }
    // Text cut mid-character across fragments is read whole, and answered.
    let mut client = RawClient::connect(&app.base, &admin, None).await;
    client.frame(Duration::from_secs(5)).await.expect("hello");
    let cut = cut_mid_character.len() - 3;
    client.send_frame(0x01, &cut_mid_character[..cut]).await;
    client.send_frame(0x80, &cut_mid_character[cut..]).await;
    loop {
        let f = client.frame(Duration::from_secs(5)).await.expect("an answer");
        assert_ne!(f.opcode, 0x8, "closed: {:?}", f.payload);
        if String::from_utf8_lossy(&f.payload).contains("\"pong\"") {
            break;
        }
    }
}

/// RFC 6455 §7.4: a close frame's code is echoed when an endpoint may send
/// it; one it may not (1005, 1006 and 1015 are never sent, others are
/// unassigned) is a protocol error, answered with 1002.
#[actix_web::test]
async fn a_close_code_no_endpoint_may_send_is_answered_with_1002() {
    let app = spawn_app().await;
    let admin = owner_token(&app).await;
    for (sent, answered) in
        [(1000, 1000), (1001, 1001), (4000, 4000), (3999, 3999), (1005, 1002), (1006, 1002), (999, 1002), (5000, 1002)]
    {
        let mut client = RawClient::connect(&app.base, &admin, None).await;
        client.frame(Duration::from_secs(5)).await.expect("hello");
        client.send_close(sent).await;
        assert_eq!(client.until_close(Duration::from_secs(5)).await, answered, "a close with {sent}");
    }
}
