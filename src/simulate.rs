//! `switchboard simulate`: sends correctly signed Meta webhooks (Messenger
//! and WhatsApp text messages from many contacts, non-ASCII text included)
//! to a server at a given rate and concurrency, and reports how it answered.
//! The benchmark uses it too.

use futures_util::stream::{self, StreamExt};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::cli::SimulateArgs;
use crate::meta::webhook::{meta_json, sign};

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

/// The i-th webhook body of a run.
pub fn body(args: &SimulateArgs, run: &str, i: usize) -> String {
    let contact = i % args.contacts.max(1);
    let now = chrono::Utc::now();
    let use_phone = match (&args.page, &args.phone) {
        (Some(_), Some(_)) => i % 2 == 1,
        (None, Some(_)) => true,
        _ => false,
    };
    let v = if use_phone {
        let phone = args.phone.clone().unwrap_or_default();
        json!({"object": "whatsapp_business_account", "entry": [{"id": "0", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone},
            "contacts": [{"profile": {"name": format!("Cliente {contact}")}, "wa_id": format!("3519{contact:08}")}],
            "messages": [{"from": format!("3519{contact:08}"), "id": format!("wamid.sim.{run}.{i}"), "timestamp": now.timestamp().to_string(),
                "type": "text", "text": {"body": format!("Olá! Pedido nº {i} — obrigado 🙂")}}]}}]}]})
    } else {
        let page = args.page.clone().unwrap_or_default();
        let ms = now.timestamp_millis();
        json!({"object": "page", "entry": [{"id": page, "time": ms, "messaging": [{
            "sender": {"id": format!("9{contact:015}")}, "recipient": {"id": page}, "timestamp": ms,
            "message": {"mid": format!("m_sim_{run}_{i}"), "text": format!("Olá! Pedido nº {i} — obrigado 🙂")}}]}]})
    };
    meta_json(&v)
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
    let jobs = (0..args.count).flat_map(|i| std::iter::repeat_n(i, copies));
    let results: Vec<(Option<u16>, Duration)> = stream::iter(jobs.enumerate())
        .map(|(n, i)| {
            let client = client.clone();
            let body = body(args, &run, i);
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
    if args.page.is_none() && args.phone.is_none() {
        anyhow::bail!("give --page and/or --phone: where the simulated contacts write");
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
