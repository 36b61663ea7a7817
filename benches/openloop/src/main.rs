//! An open-loop HTTP/1.1 load generator: N keep-alive connections issue GET requests at a
//! fixed total rate, whatever the server does, and each latency is measured from the
//! moment the request was *meant* to be sent. A closed-loop tool (wrk) waits for an
//! answer before it asks again, so a stalled server also stalls the clock that measures
//! it ("coordinated omission"); here a late answer delays the requests scheduled behind it
//! on the same connection, and their wait is counted.
//!
//! ```text
//! cargo run --release --example openloop -- --url http://127.0.0.1:8080/authz/ns/name \
//!     --header 'Authorization: Bearer TOKEN' --connections 10000 --rate 20000 --duration 10
//! ```
//!
//! `--rate 0` runs closed-loop instead (each connection asks again as soon as it is
//! answered), to find the saturation rate. Connection `i` sends at `start + (i + k * N) /
//! rate` for `k = 0, 1, ...`: the users arrive spread over the first `N / rate` seconds
//! (the connection is opened then, and its time counts in the first request's latency)
//! and each keeps its own steady pace. A request unanswered `--timeout` after it was sent
//! counts as a timeout and its connection is replaced, as a browser or a gateway would.
//!
//! The last line is machine-readable for `scripts/loadtest.sh`:
//! `result rate=... ok=... non2xx=... timeouts=... errors=... p50_ms=... p99_ms=...`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

#[derive(Parser, Clone)]
#[command(about = "Open-loop HTTP/1.1 load at a fixed rate over many keep-alive connections")]
struct Args {
    /// The URL to GET (http only).
    #[arg(long)]
    url: Uri,
    /// A request header, `NAME: VALUE` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Keep-alive connections.
    #[arg(long, short = 'c', default_value_t = 100)]
    connections: usize,
    /// Total requests per second over all connections; 0 runs closed-loop.
    #[arg(long, short = 'q', default_value_t = 0.0)]
    rate: f64,
    /// Seconds of sending.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Seconds a request (with its connect, when there is one) may take once sent.
    #[arg(long, default_value_t = 2.0)]
    timeout: f64,
}

/// What one connection saw.
#[derive(Default)]
struct Tally {
    /// Microseconds from the intended send time to the end of the answer, answered
    /// requests only (2xx or not).
    latencies: Vec<u32>,
    ok: u64,
    non2xx: u64,
    timeouts: u64,
    /// Refused or reset connections, and answers that did not parse.
    errors: u64,
    /// Requests that could not be sent at their time because the previous one on the same
    /// connection was still unanswered (their latency includes that wait).
    late: u64,
}

struct Target {
    addr: SocketAddr,
    host: HeaderValue,
    path: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// One open connection: the request half, and its driver task (aborted when replaced).
struct Conn {
    sender: SendRequest<Empty<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

async fn connect(addr: SocketAddr) -> Result<Conn, Failure> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(async move {
        // An error here is seen again by the request that is waiting on this connection.
        let _ = connection.await;
    });
    Ok(Conn { sender, driver })
}

async fn exchange(conn: &mut Option<Conn>, target: &Target) -> Result<http::StatusCode, Failure> {
    let open = match conn {
        Some(open) => open,
        None => conn.insert(connect(target.addr).await?),
    };
    let mut request = Request::get(target.path.clone()).body(Empty::<Bytes>::new())?;
    request.headers_mut().insert(HOST, target.host.clone());
    for (name, value) in &target.headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    open.sender.ready().await?;
    let response = open.sender.send_request(request).await?;
    let status = response.status();
    // Read the whole body, or the connection cannot carry the next request.
    response.into_body().collect().await?;
    Ok(status)
}

/// Connection `index` of `args.connections`: sends on its own schedule until `end`.
async fn user(index: usize, args: Args, target: std::sync::Arc<Target>, start: Instant) -> Tally {
    let mut tally = Tally::default();
    let end = start + Duration::from_secs_f64(args.duration);
    let timeout = Duration::from_secs_f64(args.timeout);
    let open_loop = args.rate > 0.0;
    let (first, every) = match open_loop {
        true => (
            Duration::from_secs_f64(index as f64 / args.rate),
            Duration::from_secs_f64(args.connections as f64 / args.rate),
        ),
        false => (Duration::ZERO, Duration::ZERO),
    };
    let mut conn: Option<Conn> = None;
    let mut k: u32 = 0;
    loop {
        let intended = match open_loop {
            true => start + first + every * k,
            false => Instant::now(),
        };
        if intended >= end {
            break;
        }
        k += 1;
        if Instant::now() > intended + Duration::from_millis(1) {
            tally.late += 1;
        }
        tokio::time::sleep_until(intended.into()).await;
        match tokio::time::timeout(timeout, exchange(&mut conn, &target)).await {
            Ok(Ok(status)) => {
                let micros = intended.elapsed().as_micros();
                tally
                    .latencies
                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
                match status.is_success() {
                    true => tally.ok += 1,
                    false => tally.non2xx += 1,
                }
            }
            Ok(Err(_)) => {
                tally.errors += 1;
                conn = None;
            }
            Err(_) => {
                tally.timeouts += 1;
                conn = None;
            }
        }
    }
    tally
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1000.0
}

fn target(args: &Args) -> Result<Target, Failure> {
    if args.url.scheme_str() != Some("http") {
        return Err("only http:// URLs".into());
    }
    let authority = args.url.authority().ok_or("the URL has no host")?;
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(
        authority.host(),
        authority.port_u16().unwrap_or(80),
    ))?
    .next()
    .ok_or("the host does not resolve")?;
    let path = args
        .url
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()?;
    let headers = args
        .headers
        .iter()
        .map(|h| {
            let (name, value) = h.split_once(':').ok_or("a header is NAME: VALUE")?;
            Ok((
                HeaderName::try_from(name.trim())?,
                HeaderValue::try_from(value.trim())?,
            ))
        })
        .collect::<Result<_, Failure>>()?;
    Ok(Target {
        addr,
        host: HeaderValue::try_from(authority.as_str())?,
        path,
        headers,
    })
}

fn main() -> Result<(), Failure> {
    let args = Args::parse();
    let target = std::sync::Arc::new(target(&args)?);
    // One thread: the load generator gets one core (taskset), the server the other.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (tally, elapsed) = runtime.block_on(async {
        let start = Instant::now() + Duration::from_millis(50);
        let users: Vec<_> = (0..args.connections)
            .map(|i| tokio::spawn(user(i, args.clone(), target.clone(), start)))
            .collect();
        let mut all = Tally::default();
        for user in users {
            let one = user.await?;
            all.latencies.extend(one.latencies);
            all.ok += one.ok;
            all.non2xx += one.non2xx;
            all.timeouts += one.timeouts;
            all.errors += one.errors;
            all.late += one.late;
        }
        Ok::<_, Failure>((all, start.elapsed()))
    })?;
    let mut latencies = tally.latencies;
    latencies.sort_unstable();
    let answered = latencies.len() as f64;
    let mode = match args.rate > 0.0 {
        true => format!("open loop, {} requests/s", args.rate),
        false => "closed loop".to_owned(),
    };
    println!(
        "{mode}, {} connections, {}s (+{:.1}s to finish)",
        args.connections,
        args.duration,
        elapsed.as_secs_f64() - args.duration
    );
    println!(
        "answered {} ({:.0}/s): 2xx {}, other {}; timeouts {}, errors {}; sent late {}",
        latencies.len(),
        answered / args.duration,
        tally.ok,
        tally.non2xx,
        tally.timeouts,
        tally.errors,
        tally.late
    );
    let [p50, p90, p99, p999] = [50.0, 90.0, 99.0, 99.9].map(|p| percentile(&latencies, p));
    let max = latencies
        .last()
        .map_or(f64::NAN, |m| f64::from(*m) / 1000.0);
    println!(
        "latency from intended send (ms): p50 {p50:.2}  p90 {p90:.2}  p99 {p99:.2}  p99.9 {p999:.2}  max {max:.2}"
    );
    println!(
        "result rate={:.0} ok={} non2xx={} timeouts={} errors={} p50_ms={p50:.2} p90_ms={p90:.2} p99_ms={p99:.2} max_ms={max:.2}",
        answered / args.duration,
        tally.ok,
        tally.non2xx,
        tally.timeouts,
        tally.errors
    );
    Ok(())
}
