//! The command line: one binary, `switchboard`, with a subcommand per job.

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "switchboard", version, about = "Schema-per-tenant social inbox backend")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the HTTP + WebSocket server (runs pending public migrations first).
    Serve,
    /// Bring `public` and every tenant schema up to date.
    Migrate {
        /// How many tenant schemas to migrate at a time.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
    },
    /// Operators' tenant work.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Operators' user work.
    #[command(subcommand)]
    User(UserCommand),
    /// Everything at once on this machine: database, fake Meta, server and a
    /// seeded tenant with simulated customers.
    Demo,
    /// Run the local fake of Meta's Graph API and OAuth dialog.
    FakeMeta {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:9090")]
        bind: String,
        /// Where to send webhooks (echoes, receipts, inbound messages), e.g.
        /// http://127.0.0.1:8080/webhooks/meta.
        #[arg(long)]
        webhook_url: Option<String>,
        /// Remove a page's or business account's subscription after this
        /// many failed deliveries in a row, as Meta does after an hour of
        /// failures (its webhooks stop until the app subscribes again).
        #[arg(long)]
        disable_after: Option<u32>,
    },
    /// Stored webhooks that could not be processed (dead letters).
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Send signed webhooks to a server, at a given rate (load and demo).
    Simulate(SimulateArgs),
    /// Encryption keys of stored tokens.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print performance figures of this machine and database.
    Bench(BenchArgs),
    /// The server's mail (SWITCHBOARD_SMTP_URL).
    #[command(subcommand)]
    Mail(MailCommand),
}

#[derive(Subcommand, Debug)]
pub enum MailCommand {
    /// Send one mail now, with the settings `serve` would use, and say
    /// what the SMTP server answered (a check of the settings).
    Test {
        /// The address to send it to.
        #[arg(long)]
        to: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Create a tenant, its schema and its owner.
    Create {
        slug: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        owner_email: String,
        #[arg(long, env = "SWITCHBOARD_OWNER_PASSWORD", hide_env_values = true)]
        owner_password: String,
        #[arg(long, default_value = "")]
        owner_name: String,
    },
    /// List tenants.
    List,
    /// Suspend a tenant: its members cannot log in or use the API.
    Suspend { slug: String },
    /// Resume a suspended tenant.
    Resume { slug: String },
    /// Drop a tenant and all its data.
    Drop {
        slug: String,
        /// Required: confirms that all of the tenant's data goes.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum WebhooksCommand {
    /// List dead letters.
    DeadLetters {
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Put dead letters back in the queue: the given ids, or all with --all.
    Replay {
        ids: Vec<i64>,
        #[arg(long)]
        all: bool,
    },
}

#[derive(Args, Debug, Clone)]
pub struct SimulateArgs {
    /// The webhook endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8080/webhooks/meta")]
    pub url: String,
    /// App secret that signs the bodies (defaults to META_APP_SECRET).
    #[arg(long, env = "META_APP_SECRET", hide_env_values = true)]
    pub app_secret: String,
    /// Facebook Page id to send Messenger messages to.
    #[arg(long)]
    pub page: Option<String>,
    /// Instagram account id to send Instagram messages to.
    #[arg(long)]
    pub instagram: Option<String>,
    /// WhatsApp phone number id to send WhatsApp messages to.
    #[arg(long)]
    pub phone: Option<String>,
    /// Which kinds of webhook, in the order each contact's turn goes
    /// (comma list; default: all of them).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = crate::simulate::Kind::ALL)]
    pub kinds: Vec<crate::simulate::Kind>,
    /// How many webhooks to send.
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// Webhooks per second (0: as fast as possible).
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Distinct contacts to spread the messages over.
    #[arg(long, default_value_t = 50)]
    pub contacts: usize,
    /// Send every webhook twice (Meta's retries).
    #[arg(long)]
    pub duplicates: bool,
    /// Events per webhook body, as entries (Meta batches under load).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Send the bodies in random order within windows of this many (Meta
    /// does not keep order when it retries; 1 keeps the order).
    #[arg(long, default_value_t = 1)]
    pub shuffle: usize,
    /// Send a webhook again, backing off, while the answer is not a 200
    /// (as Meta does), at most this many times.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Break the signature (the server must answer 403).
    #[arg(long)]
    pub bad_signature: bool,
    /// This share of the bodies, in percent, with one value retyped or
    /// removed (`meta::variants`): shapes Meta has not sent yet. The server
    /// still answers 200, then processes or dead-letters each.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub odd: u8,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Re-encrypt every stored token with the first key of
    /// SWITCHBOARD_ENCRYPTION_KEYS (the others must still be listed).
    Rotate,
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user, optionally with a membership in a tenant; or make an
    /// existing user a member, or change a member's role (no password
    /// needed for someone who exists).
    Create {
        #[arg(long)]
        email: String,
        #[arg(long, env = "SWITCHBOARD_USER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[arg(long, default_value = "")]
        name: String,
        /// Tenant slug to add the user to.
        #[arg(long, requires = "role")]
        tenant: Option<String>,
        /// owner, admin, agent or viewer.
        #[arg(long, requires = "tenant")]
        role: Option<String>,
    },
    /// Set a user's password (one who forgot theirs) and end all of their
    /// logins, in every tenant.
    Password {
        #[arg(long)]
        email: String,
        #[arg(long, env = "SWITCHBOARD_USER_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Turn off a person's two-step sign-in (a lost phone and lost recovery
    /// codes); their password stays.
    MfaOff {
        #[arg(long)]
        email: String,
    },
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Which benchmark: `tenancy`, `ingest`, `realtime`, `search` or `sends`.
    #[arg(default_value = "tenancy")]
    pub which: String,
    /// Webhooks for the `ingest` benchmark.
    #[arg(long, default_value_t = 10000)]
    pub events: usize,
    /// Concurrent senders for the `ingest` benchmark (and connections of its
    /// raw-insert ceiling).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Idle authenticated sockets for the `realtime` benchmark (comma list).
    #[arg(long, default_value = "1000,10000")]
    pub sockets: String,
    /// Connected agents during the `realtime` latency and push on/off runs
    /// (each channel's agents see its events; 50 channels).
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// Webhooks per second during the `realtime` latency run.
    #[arg(long, default_value_t = 2000)]
    pub rate: u32,
    /// Seconds of the `realtime` latency run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Rounds of push on/off bursts after the `realtime` latency run (0: the
    /// latency run only).
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// `realtime`: the channels auto-assign, so each new conversation goes
    /// to an agent online and its customer's later messages are kept for
    /// them (`customer_message`), as on a team that works its queue.
    #[arg(long)]
    pub assigned: bool,
    /// Tenants for the `migrate` timing.
    #[arg(long, default_value_t = 1000)]
    pub tenants: usize,
    /// Tenant creations to time.
    #[arg(long, default_value_t = 100)]
    pub creates: usize,
    /// Messages in the tenant the `search` benchmark searches.
    #[arg(long, default_value_t = 200_000)]
    pub messages: usize,
    /// Replies the `sends` benchmark sends with Meta answering at once.
    #[arg(long, default_value_t = 2000)]
    pub replies: usize,
    /// Replies of the `sends` round in which Meta takes `--meta-ms` over each.
    #[arg(long, default_value_t = 400)]
    pub slow_replies: usize,
    /// Conversations the `sends` benchmark's replies are spread over.
    #[arg(long, default_value_t = 200)]
    pub conversations: usize,
    /// How long the fake Meta takes over each send in the `sends` benchmark's
    /// second round (milliseconds).
    #[arg(long, default_value_t = 200)]
    pub meta_ms: u64,
    /// Customers' messages a second in the `sends` benchmark while the
    /// replies go, their webhooks' answers timed (0: none).
    #[arg(long, default_value_t = 50)]
    pub inbound_per_second: u64,
    /// Instances sharing the `sends` benchmark's database, each with its
    /// own pool and workers, as `serve` processes would (1 to 4).
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
}
