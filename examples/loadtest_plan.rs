//! The load generator of `scripts/loadtest-plan.sh` (the migration plan's load test):
//! USERS concurrent users, each one chain of requests in order: log in (token exchange),
//! DECISIONS decisions through `/authz` with the access token, refresh, log out
//! (`/revoke` with the refresh token). Every user runs at once; their requests share
//! CONNECTIONS keep-alive connections per server (as a gateway's or a backend's pool
//! would), and with several servers each request goes to the next one in turn, as
//! behind one Service. A request's latency is from its send on a free connection to the
//! end of its answer; the time a user waited for a free connection is its chain's, not
//! the request's.
//!
//! Written in Rust rather than wrk + Lua because each user's requests depend on the
//! previous answer (the tokens), and python would not keep up on one core.
//!
//! ```text
//! SERVERS=http://127.0.0.1:18100,http://127.0.0.1:18101 SECRET=apcs_... \
//!   USERS=10000 DECISIONS=20 CONNECTIONS=64 cargo run --release --example loadtest_plan
//! ```
//!
//! `THINK_MS=N`: each user waits about N ms (0.5-1.5 × N, spread by user and step) before
//! each of its requests, the first included, as a person or an app between calls does
//! (Locust's `wait_time`): the offered load is then USERS / N requests per millisecond
//! instead of as many as the servers can take, and latencies are a request's own rather
//! than a saturated queue's. Default 0: every user runs flat out (closed loop).
//!
//! Prints one markdown table (a row per step), then `errors N` and, for the first few
//! errors, what they were. Exits non-zero when any request failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, Semaphore};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const SUBJECT: &str = "urn:authplane:params:oauth:token-type:subject";
const STEPS: [&str; 4] = ["login", "authz", "refresh", "logout"];

struct Settings {
    servers: Vec<String>,
    secret: String,
    users: usize,
    decisions: usize,
    connections: usize,
    /// `LOGOUT=0`: the chain stops after the refresh (to tell what logouts cost).
    logout: bool,
    /// `THINK_MS`: the mean wait before each request of a user (0: none).
    think_ms: u64,
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn number(name: &str, default: usize) -> usize {
    env(name, &default.to_string())
        .parse()
        .unwrap_or_else(|_| panic!("{name} must be a number"))
}

/// What was measured: per step, each request's latency (µs); errors with the first
/// few described.
#[derive(Default)]
struct Results {
    latencies: [Vec<u32>; 4],
    errors: [usize; 4],
    described: Vec<String>,
    chains: Vec<u32>,
}

struct Load {
    settings: Settings,
    http: reqwest::Client,
    /// Per server, its free connections.
    slots: Vec<Semaphore>,
    next: AtomicUsize,
    results: Mutex<Results>,
}

impl Load {
    /// One request on the next server's next free connection; its latency and outcome
    /// are recorded under `step`. `Ok(body)` for a 200.
    async fn send(
        &self,
        step: usize,
        request: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<String, ()> {
        let server = self.next.fetch_add(1, Ordering::Relaxed) % self.settings.servers.len();
        let _slot = self.slots[server].acquire().await.expect("never closed");
        let started = Instant::now();
        let answer = async {
            let response = request(&self.settings.servers[server])
                .send()
                .await
                .map_err(|e| format!("transport: {e}"))?;
            let status = response.status();
            let body = response.text().await.map_err(|e| format!("body: {e}"))?;
            match status.as_u16() {
                200 => Ok(body),
                _ => Err(format!(
                    "{status}: {}",
                    body.chars().take(200).collect::<String>()
                )),
            }
        }
        .await;
        let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        let mut results = self.results.lock().await;
        results.latencies[step].push(micros);
        match answer {
            Ok(body) => Ok(body),
            Err(e) => {
                results.errors[step] += 1;
                if results.described.len() < 10 {
                    results.described.push(format!("{}: {e}", STEPS[step]));
                }
                Err(())
            }
        }
    }

    async fn user(self: Arc<Self>, user: usize) {
        let started = Instant::now();
        if self.chain(user).await.is_ok() {
            let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
            self.results.lock().await.chains.push(micros);
        }
    }

    /// A user's think time before its request number `request`: 0.5-1.5 × THINK_MS,
    /// spread by a hash of both so that users do not move in step.
    async fn think(&self, user: usize, request: usize) {
        if self.settings.think_ms == 0 {
            return;
        }
        let mut x = (user as u64) << 16 ^ request as u64 ^ 0x9E37_79B9_7F4A_7C15;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        let spread = self.settings.think_ms / 2 + x % (self.settings.think_ms + 1);
        tokio::time::sleep(Duration::from_millis(spread)).await;
    }

    async fn chain(&self, user: usize) -> Result<(), ()> {
        let subject = format!("user-{user}");
        let mut request = 0;
        self.think(user, request).await;
        let tokens = self
            .send(0, |base| {
                self.http.post(format!("{base}/auth/web/token")).form(&[
                    ("grant_type", EXCHANGE),
                    ("client_id", "auth/web"),
                    ("client_secret", self.settings.secret.as_str()),
                    ("subject_token", subject.as_str()),
                    ("subject_token_type", SUBJECT),
                    ("audience", "payments"),
                    ("authplane_claims", r#"{"roles": ["payments"]}"#),
                ])
            })
            .await?;
        let (access, refresh) = tokens_of(&tokens)?;
        for _ in 0..self.settings.decisions {
            request += 1;
            self.think(user, request).await;
            self.send(1, |base| {
                self.http
                    .get(format!("{base}/authz/shop/payments"))
                    .bearer_auth(&access)
            })
            .await?;
        }
        request += 1;
        self.think(user, request).await;
        let rotated = self
            .send(2, |base| {
                self.http.post(format!("{base}/auth/web/token")).form(&[
                    ("grant_type", "refresh_token"),
                    ("client_id", "auth/web"),
                    ("client_secret", self.settings.secret.as_str()),
                    ("refresh_token", refresh.as_str()),
                ])
            })
            .await?;
        let (_, refresh) = tokens_of(&rotated)?;
        if !self.settings.logout {
            return Ok(());
        }
        self.think(user, request + 1).await;
        self.send(3, |base| {
            self.http.post(format!("{base}/auth/web/revoke")).form(&[
                ("token", refresh.as_str()),
                ("token_type_hint", "refresh_token"),
                ("client_id", "auth/web"),
            ])
        })
        .await?;
        Ok(())
    }
}

fn tokens_of(body: &str) -> Result<(String, String), ()> {
    let body: serde_json::Value = serde_json::from_str(body).map_err(|_| ())?;
    match (
        body["access_token"].as_str(),
        body["refresh_token"].as_str(),
    ) {
        (Some(access), Some(refresh)) => Ok((access.to_owned(), refresh.to_owned())),
        _ => Err(()),
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

fn main() {
    let settings = Settings {
        servers: env("SERVERS", "http://127.0.0.1:18100")
            .split(',')
            .map(|s| s.trim_end_matches('/').to_owned())
            .collect(),
        secret: std::env::var("SECRET").expect("SECRET: the client secret of auth/web"),
        users: number("USERS", 10_000),
        decisions: number("DECISIONS", 20),
        connections: number("CONNECTIONS", 64),
        logout: number("LOGOUT", 1) != 0,
        think_ms: number("THINK_MS", 0) as u64,
    };
    // One thread: the load generator gets one core (taskset), the servers the other.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // reqwest's TLS needs a provider even for plain HTTP; the server's own.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    runtime.block_on(async move {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(settings.connections)
            .pool_idle_timeout(Duration::from_secs(300))
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let slots = settings
            .servers
            .iter()
            .map(|_| Semaphore::new(settings.connections))
            .collect();
        let users = settings.users;
        let load = Arc::new(Load {
            settings,
            http,
            slots,
            next: AtomicUsize::new(0),
            results: Mutex::new(Results::default()),
        });
        let started = Instant::now();
        let tasks: Vec<_> = (0..users)
            .map(|user| tokio::spawn(load.clone().user(user)))
            .collect();
        for task in tasks {
            task.await.expect("a user's task panicked");
        }
        let wall = started.elapsed();
        let mut results = load.results.lock().await;
        let total: usize = results.latencies.iter().map(Vec::len).sum();
        println!(
            "users {users}, decisions per user {}, think time {} ms, connections per server {}, servers {}: {total} requests in {:.1} s, {:.0} requests/s",
            load.settings.decisions,
            load.settings.think_ms,
            load.settings.connections,
            load.settings.servers.len(),
            wall.as_secs_f64(),
            total as f64 / wall.as_secs_f64()
        );
        println!();
        println!("| step | requests | errors | p50 ms | p99 ms | max ms |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: |");
        let Results {
            latencies, errors, ..
        } = &mut *results;
        for ((name, sorted), errors) in STEPS.iter().zip(latencies.iter_mut()).zip(errors) {
            sorted.sort_unstable();
            println!(
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} |",
                name,
                sorted.len(),
                errors,
                percentile(sorted, 50.0),
                percentile(sorted, 99.0),
                percentile(sorted, 100.0),
            );
        }
        results.chains.sort_unstable();
        println!(
            "| whole chain (one user, queueing included) | {} | | {:.0} | {:.0} | {:.0} |",
            results.chains.len(),
            percentile(&results.chains, 50.0),
            percentile(&results.chains, 99.0),
            percentile(&results.chains, 100.0),
        );
        let errors: usize = results.errors.iter().sum();
        println!();
        println!("errors {errors}");
        for described in &results.described {
            println!("  {described}");
        }
        if errors > 0 {
            std::process::exit(1);
        }
    });
}
