//! `switchboard simulate`: sends correctly signed Meta webhooks to a server
//! at a given rate and concurrency, and reports how it answered. Contacts
//! of a Facebook Page, an Instagram account and a WhatsApp number write
//! (non-ASCII text included) and the conversation goes on as on Meta: with
//! `--kinds` left at its default, each contact's turn is a message, an
//! image, a button tap, a reply the business typed on its phone or in the
//! Page inbox (an echo), the receipts of that reply and a reaction to it,
//! and a location or a postback where the platform has one. Receipts and
//! reactions name the ids of the turn's own messages, so they land on real
//! rows. The benchmarks use it too (text only).

use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::cli::SimulateArgs;
use crate::meta::webhook::{meta_json, sign};

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
}

impl Kind {
    /// Every kind, in the order a contact's turn goes.
    pub const ALL: [Kind; 9] = [
        Kind::Text,
        Kind::Image,
        Kind::Button,
        Kind::Postback,
        Kind::Location,
        Kind::Echo,
        Kind::Delivery,
        Kind::Read,
        Kind::Reaction,
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
            Platform::Messenger => kind != Kind::Location,
            Platform::Instagram => !matches!(kind, Kind::Location | Kind::Delivery | Kind::Button),
            Platform::Whatsapp => kind != Kind::Postback,
        }
    }
}

#[derive(Debug, Default)]
pub struct SimReport {
    pub sent: usize,
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

/// The webhooks to send, in order, each made when it is taken (so its
/// times are current): the targets take turns, and each target's contacts
/// take turns through the kinds.
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
    let mut next = 0;
    std::iter::from_fn(move || {
        let n = turns.len().max(1);
        let t = turns.get_mut(next % n)?;
        next += 1;
        t.next()
    })
    .take(args.count)
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
    type Item = String;
    fn next(&mut self) -> Option<String> {
        if self.kinds.is_empty() {
            return None;
        }
        let (turn, kind) = (self.step / self.kinds.len(), self.kinds[self.step % self.kinds.len()]);
        self.step += 1;
        Some(meta_json(&self.event(turn, kind)))
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
                        json!({"postback": {"mid": mid(kind), "title": "Get Started", "payload": "GET_STARTED"}})
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
                    json!({"statuses": [{"id": format!("wamid.{answer}"), "status": s, "timestamp": secs,
                    "recipient_id": wa_id}]})
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
                        "caption": "esta", "mime_type": "image/jpeg", "id": format!("77{turn:012}")}}))]}),
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
                    Kind::Postback => ("messages", json!({})),
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
        .build()
        .unwrap_or_default();
    let run = format!("{:x}", rand::random::<u32>());
    let started = Instant::now();
    let gap = if args.rate == 0 { Duration::ZERO } else { Duration::from_secs(1) / args.rate };
    let copies = if args.duplicates { 2 } else { 1 };
    let jobs = bodies(args, &run).flat_map(|b| std::iter::repeat_n(b, copies));
    let results: Vec<(Option<u16>, Duration)> = stream::iter(jobs.enumerate())
        .map(|(n, body)| {
            let client = client.clone();
            let sig = if args.bad_signature {
                "sha256=00".to_string()
            } else {
                sign(args.app_secret.as_bytes(), body.as_bytes())
            };
            let url = args.url.clone();
            let due = started + gap * n as u32;
            async move {
                tokio::time::sleep_until(due.into()).await;
                let t = Instant::now();
                let status = client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("x-hub-signature-256", sig)
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .ok();
                (status, t.elapsed())
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    let mut report = SimReport { elapsed: started.elapsed(), ..Default::default() };
    for (status, latency) in results {
        report.sent += 1;
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
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(run(&args));
    println!(
        "sent {} webhook(s) in {:.2?} ({:.0}/s); answers: {:?}; transport errors: {}",
        report.sent,
        report.elapsed,
        report.sent as f64 / report.elapsed.as_secs_f64().max(1e-9),
        report.statuses,
        report.errors
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
