//! `switchboard simulate`: sends correctly signed Meta webhooks to a server
//! at a given rate and concurrency, and reports how it answered. Contacts
//! of a Facebook Page, an Instagram account and a WhatsApp number write
//! (non-ASCII text included) and the conversation goes on as on Meta: with
//! `--kinds` left at its default, each contact's turn is a message, an
//! image, a button tap, a reply the business typed on its phone or in the
//! Page inbox (an echo), the receipts of that reply and a reaction to it,
//! a location or a postback where the platform has one, and the contact
//! editing their text and unsending their photo where the platform lets
//! them. Receipts, reactions, edits and unsends name the ids of the turn's
//! own messages, so they land on real rows. Bodies are signed with both of Meta's headers and escaped as Meta
//! escapes; `--batch` puts several events of a target in one body,
//! `--duplicates` sends each twice, `--shuffle N` sends them in random order
//! within windows of N, `--odd P` changes one value in P % of the bodies
//! (retyped or removed, as Graph versions do), and `--retries` resends,
//! backing off, what was not answered 200. The benchmarks use it too (text
//! only).

use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::cli::SimulateArgs;
use crate::meta::webhook::{meta_json, sign, sign_sha1};

/// One kind of webhook. Each platform sends the kinds it has; a kind a
/// platform lacks is skipped for it (Instagram has no delivery receipts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A contact's text message.
    Text,
    /// A contact's photo.
    Image,
    /// A tap on a button: Messenger quick reply, WhatsApp button reply.
    Button,
    /// Messenger or Instagram postback (Get Started, a menu item, an ice breaker).
    Postback,
    /// WhatsApp location pin.
    Location,
    /// The business answering from elsewhere: Page inbox, Instagram app,
    /// WhatsApp Business app (`smb_message_echoes`).
    Echo,
    /// Delivery receipt of that answer (Messenger delivery, WhatsApp status).
    Delivery,
    /// Read receipt of that answer (Messenger/Instagram read, WhatsApp status).
    Read,
    /// The contact reacting to that answer.
    Reaction,
    /// The contact editing the turn's text (Messenger, Instagram).
    Edit,
    /// The contact unsending the turn's photo (Instagram).
    Unsend,
}

impl Kind {
    /// Every kind, in the order a contact's turn goes.
    pub const ALL: [Kind; 11] = [
        Kind::Text,
        Kind::Image,
        Kind::Button,
        Kind::Postback,
        Kind::Location,
        Kind::Echo,
        Kind::Delivery,
        Kind::Read,
        Kind::Reaction,
        Kind::Edit,
        Kind::Unsend,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Platform {
    Messenger,
    Instagram,
    Whatsapp,
}

impl Platform {
    fn has(self, kind: Kind) -> bool {
        match self {
            Platform::Messenger => !matches!(kind, Kind::Location | Kind::Unsend),
            Platform::Instagram => !matches!(kind, Kind::Location | Kind::Delivery | Kind::Button),
            Platform::Whatsapp => !matches!(kind, Kind::Postback | Kind::Edit | Kind::Unsend),
        }
    }
}

#[derive(Debug, Default)]
pub struct SimReport {
    /// Bodies sent (each once however often it was retried).
    pub sent: usize,
    /// Attempts after the first.
    pub retried: usize,
    pub statuses: BTreeMap<u16, usize>,
    pub errors: usize,
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
}

impl SimReport {
    pub fn percentile(&self, p: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
}

const TEXTS: [&str; 4] = [
    "Olá! Pedido nº {i} — obrigado 🙂",
    "Hi, is order {i} on its way?",
    "¿Tienen envío a Sevilla? Pedido {i}",
    "Здравствуйте, заказ {i} ещё не пришёл",
];

/// The webhook bodies to send, in order, each made when it is taken (so
/// its times are current): the targets take turns, each target's contacts
/// take turns through the kinds, and a body carries up to `--batch` events
/// of its target as entries (Meta batches so under load). `--count` counts
/// events.
pub fn bodies(args: &SimulateArgs, run: &str) -> impl Iterator<Item = String> {
    let targets: Vec<(Platform, &str)> = [
        (Platform::Messenger, args.page.as_deref()),
        (Platform::Instagram, args.instagram.as_deref()),
        (Platform::Whatsapp, args.phone.as_deref()),
    ]
    .into_iter()
    .filter_map(|(p, id)| Some((p, id?)))
    .collect();
    let mut turns: Vec<Turns> = targets
        .iter()
        .enumerate()
        .map(|(n, &(platform, id))| Turns {
            platform,
            id: id.to_string(),
            kinds: args.kinds.iter().copied().filter(|k| platform.has(*k)).collect(),
            run: run.to_string(),
            target: n,
            contacts: args.contacts.max(1),
            step: 0,
        })
        .filter(|t| !t.kinds.is_empty())
        .collect();
    let (batch, mut left, mut next) = (args.batch.max(1), args.count, 0);
    let odd = args.odd.min(100);
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = turns.len().max(1);
        let t = turns.get_mut(next % n)?;
        next += 1;
        let take = batch.min(left);
        left -= take;
        let mut body = t.next()?;
        for more in t.take(take - 1) {
            if let (Some(entries), Some(extra)) = (body["entry"].as_array_mut(), more["entry"].as_array()) {
                entries.extend(extra.iter().cloned());
            }
        }
        if odd > 0 {
            let mut rng = rand::thread_rng();
            if rand::Rng::gen_range(&mut rng, 0..100) < odd {
                body = oddly(&body, &mut rng);
            }
        }
        Some(meta_json(&body))
    })
}

/// `body` with one value, picked at random, retyped or removed
/// ([`crate::meta::variants`]).
pub fn oddly(body: &Value, rng: &mut impl rand::Rng) -> Value {
    use rand::seq::SliceRandom;
    let at = crate::meta::variants::pointers(body);
    let values = crate::meta::variants::odd_values();
    match (at.choose(rng), values.choose(rng)) {
        (Some(at), Some(with)) => crate::meta::variants::changed(body, at, with.as_ref()),
        _ => body.clone(),
    }
}

/// `items` in random order within windows of `window` (1: as they come),
/// as Meta delivers when it retries: a receipt before its message, a
/// duplicate before the original.
pub fn shuffled<T>(mut items: impl Iterator<Item = T>, window: usize) -> impl Iterator<Item = T> {
    use rand::seq::SliceRandom;
    let mut buf: Vec<T> = Vec::new();
    std::iter::from_fn(move || {
        if buf.is_empty() {
            buf.extend(items.by_ref().take(window.max(1)));
            buf.shuffle(&mut rand::thread_rng());
        }
        buf.pop()
    })
}

/// One target's endless webhooks.
struct Turns {
    platform: Platform,
    id: String,
    kinds: Vec<Kind>,
    run: String,
    target: usize,
    contacts: usize,
    step: usize,
}

impl Iterator for Turns {
    type Item = Value;
    fn next(&mut self) -> Option<Value> {
        if self.kinds.is_empty() {
            return None;
        }
        let (turn, kind) = (self.step / self.kinds.len(), self.kinds[self.step % self.kinds.len()]);
        self.step += 1;
        Some(self.event(turn, kind))
    }
}

impl Turns {
    fn event(&self, turn: usize, kind: Kind) -> Value {
        let contact = turn % self.contacts;
        let now = chrono::Utc::now();
        let (ms, secs) = (now.timestamp_millis(), now.timestamp().to_string());
        let text = TEXTS[turn % TEXTS.len()].replace("{i}", &turn.to_string());
        // Ids of this turn's messages: a kind's own, and the business's answer.
        let run = &self.run;
        let own = |k: Kind| format!("sim.{run}.{}.{turn}.{k:?}", self.target).to_lowercase();
        let answer = own(Kind::Echo);
        let id = &self.id;
        match self.platform {
            Platform::Messenger | Platform::Instagram => {
                let psid = match self.platform {
                    Platform::Messenger => format!("9{contact:015}"),
                    _ => format!("68{contact:014}"),
                };
                let mid = |k: Kind| format!("m_{}", own(k));
                let (from, to) =
                    if kind == Kind::Echo { (id.as_str(), psid.as_str()) } else { (psid.as_str(), id.as_str()) };
                let mut m = json!({"sender": {"id": from}, "recipient": {"id": to}, "timestamp": ms});
                let body = match kind {
                    Kind::Text => json!({"message": {"mid": mid(kind), "text": text}}),
                    Kind::Image => json!({"message": {"mid": mid(kind), "attachments": [{"type": "image",
                        "payload": {"url": format!("https://scontent.xx.fbcdn.net/v/sim/{turn}.jpg?oe=66F00000")}}]}}),
                    Kind::Button => json!({"message": {"mid": mid(kind), "text": "Yes please",
                        "quick_reply": {"payload": format!("CONFIRM_{turn}")}}}),
                    Kind::Postback => {
                        json!({"postback": {"mid": mid(kind), "title": "Get Started", "payload": "GET_STARTED",
                            "referral": {"ref": format!("campaign_{turn}"), "source": "SHORTLINK", "type": "OPEN_THREAD"}}})
                    }
                    Kind::Echo => json!({"message": {"mid": format!("m_{answer}"), "is_echo": true,
                        "app_id": 263902037430900_i64, "text": format!("Obrigado! Resposta {turn} 👍")}}),
                    Kind::Delivery => json!({"delivery": {"mids": [format!("m_{answer}")], "watermark": ms}}),
                    Kind::Read if self.platform == Platform::Instagram => {
                        json!({"read": {"mid": format!("m_{answer}")}})
                    }
                    Kind::Read => json!({"read": {"watermark": ms}}),
                    Kind::Reaction => json!({"reaction": {"mid": format!("m_{answer}"), "action": "react",
                        "reaction": "love", "emoji": "❤️"}}),
                    Kind::Edit => json!({"message_edit": {"mid": mid(Kind::Text),
                        "text": format!("{text} (editado)"), "num_edit": 1}}),
                    Kind::Unsend => json!({"message": {"mid": mid(Kind::Image), "is_deleted": true}}),
                    // Never asked of these platforms (`Platform::has`).
                    Kind::Location => Value::Null,
                };
                if let (Some(m), Some(b)) = (m.as_object_mut(), body.as_object()) {
                    m.extend(b.clone());
                }
                let object = if self.platform == Platform::Messenger { "page" } else { "instagram" };
                json!({"object": object, "entry": [{"id": id, "time": ms, "messaging": [m]}]})
            }
            Platform::Whatsapp => {
                let wa_id = format!("3519{contact:08}");
                let wamid = |k: Kind| format!("wamid.{}", own(k));
                let metadata = json!({"display_phone_number": "15550000000", "phone_number_id": id});
                let message = |k: Kind, content: Value| {
                    let mut m = json!({"from": wa_id, "id": wamid(k), "timestamp": secs, "type": format!("{k:?}").to_lowercase()});
                    if let (Some(m), Some(c)) = (m.as_object_mut(), content.as_object()) {
                        m.extend(c.clone());
                    }
                    m
                };
                let status = |s: &str| {
                    let mut st =
                        json!({"id": format!("wamid.{answer}"), "status": s, "timestamp": secs, "recipient_id": wa_id});
                    // A service reply is priced per message; Meta says so once, on delivery.
                    if s == "delivered" {
                        st["pricing"] = json!({"billable": false, "pricing_model": "PMP", "type": "free_customer_service", "category": "service"});
                    }
                    json!({ "statuses": [st] })
                };
                let contacts = json!([{"profile": {"name": format!("Cliente {contact}")}, "wa_id": wa_id}]);
                let (field, value) = match kind {
                    Kind::Text => (
                        "messages",
                        json!({"contacts": contacts, "messages": [message(kind, json!({"text": {"body": text}}))]}),
                    ),
                    Kind::Image => (
                        "messages",
                        json!({"contacts": contacts, "messages": [message(kind, json!({"image": {
                        "caption": "esta", "mime_type": "image/jpeg",
                        "sha256": "S3xWnH0b4vE5c2bY6mF8qQ9rT1uV3wX5yZ7aB9cD1eE=", "id": format!("77{turn:012}")}}))]}),
                    ),
                    Kind::Button => (
                        "messages",
                        json!({"contacts": contacts, "messages": [message(Kind::Button, json!({
                        "type": "interactive", "interactive": {"type": "button_reply",
                            "button_reply": {"id": format!("confirm-{turn}"), "title": "Confirmar"}}}))]}),
                    ),
                    Kind::Location => (
                        "messages",
                        json!({"contacts": contacts, "messages": [message(kind, json!({"location": {
                        "latitude": 38.7223, "longitude": -9.1393, "name": "Loja"}}))]}),
                    ),
                    Kind::Echo => (
                        "smb_message_echoes",
                        json!({"message_echoes": [{"from": "15550000000", "to": wa_id,
                        "id": format!("wamid.{answer}"), "timestamp": secs, "type": "text",
                        "text": {"body": format!("Obrigado! Resposta {turn} 👍")}}]}),
                    ),
                    Kind::Delivery => ("messages", status("delivered")),
                    Kind::Read => ("messages", status("read")),
                    Kind::Reaction => (
                        "messages",
                        json!({"contacts": contacts, "messages": [message(kind, json!({
                        "reaction": {"message_id": format!("wamid.{answer}"), "emoji": "👍"}}))]}),
                    ),
                    // Never asked of WhatsApp (`Platform::has`).
                    Kind::Postback | Kind::Edit | Kind::Unsend => ("messages", json!({})),
                };
                let mut value = value;
                if let Some(v) = value.as_object_mut() {
                    v.insert("messaging_product".into(), json!("whatsapp"));
                    v.insert("metadata".into(), metadata);
                }
                json!({"object": "whatsapp_business_account", "entry": [{"id": "0", "changes": [{"field": field, "value": value}]}]})
            }
        }
    }
}

pub async fn run(args: &SimulateArgs) -> SimReport {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(args.concurrency)
        // A slow rate leaves connections idle between webhooks; the server
        // may close one as the next goes out (`http::CLIENT_IDLE`).
        .pool_idle_timeout(crate::http::CLIENT_IDLE)
        .build()
        .unwrap_or_default();
    let run = format!("{:x}", rand::random::<u32>());
    let started = Instant::now();
    let gap = if args.rate == 0 { Duration::ZERO } else { Duration::from_secs(1) / args.rate };
    let copies = if args.duplicates { 2 } else { 1 };
    let jobs = shuffled(bodies(args, &run).flat_map(|b| std::iter::repeat_n(b, copies)), args.shuffle);
    let results: Vec<(Option<u16>, Duration, u32)> = stream::iter(jobs.enumerate())
        .map(|(n, body)| {
            let client = client.clone();
            // Both headers, as Meta sends them; a broken signature breaks both.
            let (sig256, sig1) = if args.bad_signature {
                ("sha256=00".to_string(), "sha1=00".to_string())
            } else {
                (
                    sign(args.app_secret.as_bytes(), body.as_bytes()),
                    sign_sha1(args.app_secret.as_bytes(), body.as_bytes()),
                )
            };
            let url = args.url.clone();
            let due = started + gap * n as u32;
            let retries = args.retries;
            async move {
                tokio::time::sleep_until(due.into()).await;
                let mut attempt = 0;
                loop {
                    let t = Instant::now();
                    let status = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("x-hub-signature-256", &sig256)
                        .header("x-hub-signature", &sig1)
                        .body(body.clone())
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .ok();
                    // Meta retries whatever was not a 200, backing off.
                    if status == Some(200) || attempt >= retries {
                        return (status, t.elapsed(), attempt);
                    }
                    tokio::time::sleep(Duration::from_millis(100u64 << attempt.min(6))).await;
                    attempt += 1;
                }
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let mut report = SimReport { elapsed: started.elapsed(), ..Default::default() };
    for (status, latency, retried) in results {
        report.sent += 1;
        report.retried += retried as usize;
        match status {
            Some(s) => *report.statuses.entry(s).or_default() += 1,
            None => report.errors += 1,
        }
        report.latencies.push(latency);
    }
    report
}

pub fn run_cli(args: SimulateArgs) -> anyhow::Result<()> {
    if args.page.is_none() && args.phone.is_none() && args.instagram.is_none() {
        anyhow::bail!("give --page, --instagram and/or --phone: where the simulated contacts write");
    }
    if args.count > 0 && bodies(&args, "check").next().is_none() {
        anyhow::bail!(
            "none of --kinds is sent on the platforms given (postback: Messenger and Instagram; location: WhatsApp)"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(run(&args));
    println!(
        "sent {} webhook(s) in {:.2?} ({:.0}/s); answers: {:?}; transport errors: {}; retries: {}",
        report.sent,
        report.elapsed,
        report.sent as f64 / report.elapsed.as_secs_f64().max(1e-9),
        report.statuses,
        report.errors,
        report.retried
    );
    println!(
        "answer latency: p50 {:.2?}, p90 {:.2?}, p99 {:.2?}, max {:.2?}",
        report.percentile(0.5),
        report.percentile(0.9),
        report.percentile(0.99),
        report.percentile(1.0)
    );
    if report.errors > 0 || report.statuses.keys().any(|s| *s != 200) && !args.bad_signature {
        anyhow::bail!("some webhooks were not accepted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    fn args(url: String) -> SimulateArgs {
        SimulateArgs {
            url,
            app_secret: "sim-secret".into(),
            page: Some("102938475610293".into()),
            instagram: None,
            phone: Some("123456789012345".into()),
            count: 10,
            rate: 0,
            concurrency: 2,
            contacts: 5,
            duplicates: false,
            bad_signature: false,
            batch: 3,
            retries: 2,
            shuffle: 1,
            kinds: Kind::ALL.to_vec(),
            odd: 0,
        }
    }

    #[test]
    fn bodies_carry_up_to_a_batch_of_one_targets_events_and_count_events() {
        let bodies: Vec<Value> =
            bodies(&args(String::new()), "r").map(|b| serde_json::from_str(&b).expect("json")).collect();
        // 10 events in bodies of 3: page 3, phone 3, page 3, phone 1.
        let shape: Vec<(&str, usize)> = bodies
            .iter()
            .map(|b| (b["object"].as_str().unwrap_or(""), b["entry"].as_array().map_or(0, |e| e.len())))
            .collect();
        assert_eq!(
            shape,
            [("page", 3), ("whatsapp_business_account", 3), ("page", 3), ("whatsapp_business_account", 1)]
        );
        // The page's messages: text, image and button of turn 0, then the
        // answer (echo) after the postback; each id only once.
        let mids: HashSet<String> = bodies
            .iter()
            .flat_map(|b| b["entry"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["messaging"][0]["message"]["mid"].as_str().map(str::to_string))
            .collect();
        assert_eq!(mids.len(), 4, "{mids:?}");
    }

    #[test]
    fn an_odd_body_has_one_value_retyped_or_removed() {
        use crate::meta::variants::{every_variant, odd_values};
        use rand::SeedableRng;
        let body: Value =
            serde_json::from_str(&bodies(&args(String::new()), "r").next().expect("a body")).expect("json");
        let all = every_variant(&body, &odd_values());
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut seen = HashSet::new();
        for _ in 0..300 {
            let odd = oddly(&body, &mut rng);
            let which = all.iter().position(|(_, v)| v == &odd);
            assert!(which.is_some(), "not one value changed: {odd}");
            seen.insert(which);
        }
        assert!(seen.len() > 100, "picked from only {} of {} variants", seen.len(), all.len());
        // --odd 100: as many bodies, each still JSON.
        let odd = bodies(&SimulateArgs { odd: 100, ..args(String::new()) }, "r");
        assert_eq!(odd.filter(|b| serde_json::from_str::<Value>(b).is_ok()).count(), 4);
    }

    #[test]
    fn shuffling_reorders_only_within_its_window() {
        let out: Vec<usize> = shuffled(0..100, 8).collect();
        let mut sorted = out.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>(), "nothing lost or repeated");
        for (w, chunk) in out.chunks(8).enumerate() {
            assert!(chunk.iter().all(|i| i / 8 == w), "{chunk:?} left window {w}");
        }
        assert_ne!(out, sorted, "some order changed (100 items in windows of 8: 1 in ~10^50 to stay sorted)");
        assert_eq!(shuffled(0..5, 1).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    }

    #[actix_web::test]
    async fn both_signatures_go_and_refused_webhooks_are_retried() {
        // A receiver that refuses each body the first time it sees it.
        let seen: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let s = seen.clone();
        let server = HttpServer::new(move || {
            let s = s.clone();
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let s = s.clone();
                async move {
                    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    let ok = header("x-hub-signature-256") == sign(b"sim-secret", &body)
                        && header("x-hub-signature") == sign_sha1(b"sim-secret", &body);
                    let text = String::from_utf8_lossy(&body).to_string();
                    let mut seen = s.lock().expect("lock");
                    let again = seen.iter().any(|(b, _)| *b == text);
                    seen.push((text, ok));
                    if again {
                        HttpResponse::Ok().finish()
                    } else {
                        HttpResponse::ServiceUnavailable().finish()
                    }
                }
            }))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .expect("bind");
        let addr = server.addrs()[0];
        let handle = server.run();
        let stop = handle.handle();
        actix_web::rt::spawn(handle);
        let report = run(&args(format!("http://{addr}/webhooks/meta"))).await;
        stop.stop(false).await;
        assert_eq!((report.sent, report.retried, report.errors), (4, 4, 0));
        assert_eq!(report.statuses.get(&200), Some(&4));
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 8);
        assert!(seen.iter().all(|(_, ok)| *ok), "both headers sign the exact bytes");
        assert!(seen.iter().all(|(b, _)| b.is_ascii()), "bodies are escaped as Meta's are");
    }
}
