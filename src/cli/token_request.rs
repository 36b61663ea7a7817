//! `authplane token exchange` and `authplane token refresh`: a trusted workload's login
//! and a refresh, as `POST {issuer}/token` requests, for testing and support.
//!
//! Credentials never come as plain arguments (they would land in the shell's history and
//! in `ps`): a client secret comes from a file or `AUTHPLANE_CLIENT_SECRET`, an assertion
//! and a refresh token from a file or stdin. The answer is printed as the server sent it
//! (or one field of it); a refusal is the server's OAuth error and description, with an
//! exit code that tells a script whether to retry (see [`ExitCode`]).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde_json::Value;

use crate::cli::error::{self, CliError};
use crate::cli::target::parse_id;
use crate::server::refresh_cookie::COOKIE_NAME;
use crate::token_endpoint::{CLIENT_ASSERTION_JWT, GRANT_REFRESH_TOKEN, GRANT_TOKEN_EXCHANGE};

/// The environment variable a client secret may come from.
pub const SECRET_ENV: &str = "AUTHPLANE_CLIENT_SECRET";
/// The subject token type of a subject the workload asserts.
const TOKEN_TYPE_SUBJECT: &str = crate::token_endpoint::TOKEN_TYPE_SUBJECT;
/// How long a request may take: the endpoint answers within its store deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Exit codes of `token exchange` and `token refresh`, beyond 0 (the answer printed) and
/// 1 (a usage error, an unreadable file: nothing was sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// The server refused the request with an OAuth error (`invalid_grant`,
    /// `invalid_client`, ...): sending it again gets the same answer.
    Refused = 2,
    /// The server could not answer now (`503`, `429`, unreachable, timed out, or not a
    /// token endpoint's answer): retrying later may work.
    Unavailable = 3,
}

/// Where the request goes and who makes it.
#[derive(Args)]
pub(crate) struct Endpoint {
    /// The issuer (the SigningKey's `issuer`); the request goes to `{issuer}/token`.
    #[arg(long, value_name = "URL")]
    issuer: url::Url,
    /// Send the request to this server (scheme, host and port) instead of the issuer's,
    /// keeping the issuer's path: a dev server on loopback, or a `kubectl port-forward`.
    #[arg(long, value_name = "URL")]
    server: Option<url::Url>,
    /// The TokenClient, as NAMESPACE/NAME (its `client_id`).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    client: String,
    /// A file holding the client secret (dev mode, `authplane token client-secret`);
    /// without it, the secret is read from AUTHPLANE_CLIENT_SECRET when that is set.
    #[arg(long, value_name = "FILE")]
    client_secret_file: Option<PathBuf>,
    /// A file holding a client assertion: the workload's projected ServiceAccount token
    /// (its audience the issuer URL), on a cluster.
    #[arg(long, value_name = "FILE", conflicts_with = "client_secret_file")]
    client_assertion_file: Option<PathBuf>,
    /// Print only this field of the answer (`access_token`, `refresh_token`,
    /// `expires_in`, ...), a string without quotes.
    #[arg(long, value_name = "FIELD")]
    output: Option<String>,
}

#[derive(Args)]
pub(crate) struct ExchangeArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// The user, as the workload asserts it (after it checked the password).
    #[arg(long)]
    subject: String,
    /// An audience of the access token; repeat for several (default: the client's first).
    #[arg(long, value_name = "AUD")]
    audience: Vec<String>,
    /// Custom claims, a JSON object (each one of the client's `allowedClaims`).
    #[arg(long, value_name = "JSON")]
    claims: Option<String>,
}

#[derive(Args)]
pub(crate) struct RefreshArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// A file holding the refresh token; `-` or absent: read from stdin.
    #[arg(long, value_name = "FILE")]
    refresh_token_file: Option<PathBuf>,
}

pub(crate) fn exchange(args: ExchangeArgs) -> Result<(), CliError> {
    if let Some(claims) = &args.claims {
        match serde_json::from_str::<Value>(claims) {
            Ok(Value::Object(_)) => {}
            Ok(_) => return Err(CliError::Usage("--claims must be a JSON object".into())),
            Err(e) => {
                return Err(CliError::Usage(format!(
                    "--claims is not JSON ({e}); write it in single quotes: --claims '{{\"roles\":[\"a\"]}}'"
                )));
            }
        }
    }
    let mut form = vec![
        ("grant_type", GRANT_TOKEN_EXCHANGE.to_owned()),
        ("subject_token", args.subject),
        ("subject_token_type", TOKEN_TYPE_SUBJECT.to_owned()),
    ];
    if !args.audience.is_empty() {
        form.push(("audience", args.audience.join(" ")));
    }
    if let Some(claims) = args.claims {
        form.push(("authplane_claims", claims));
    }
    let credentials = credentials(&args.endpoint)?;
    if credentials.iter().all(|(name, _)| *name == "client_id") {
        return Err(CliError::Usage(format!(
            "a login needs the client's credentials: --client-secret-file FILE, {SECRET_ENV}, or --client-assertion-file FILE"
        )));
    }
    send(&args.endpoint, form, credentials)
}

pub(crate) fn refresh(args: RefreshArgs) -> Result<(), CliError> {
    let token = match args.refresh_token_file.as_deref() {
        None => read_stdin("the refresh token")?,
        Some(path) if path == Path::new("-") => read_stdin("the refresh token")?,
        Some(path) => read_secret_file(path, "--refresh-token-file")?,
    };
    let form = vec![
        ("grant_type", GRANT_REFRESH_TOKEN.to_owned()),
        ("refresh_token", token),
    ];
    // A refresh needs only client_id (a public client); credentials given are sent.
    let credentials = credentials(&args.endpoint)?;
    send(&args.endpoint, form, credentials)
}

/// `client_id` plus the secret or assertion the flags name (none for a public client).
fn credentials(endpoint: &Endpoint) -> Result<Vec<(&'static str, String)>, CliError> {
    let id = parse_id(&endpoint.client, "--client")?;
    let mut form = vec![("client_id", id.to_string())];
    if let Some(path) = &endpoint.client_assertion_file {
        form.push(("client_assertion_type", CLIENT_ASSERTION_JWT.to_owned()));
        form.push((
            "client_assertion",
            read_secret_file(path, "--client-assertion-file")?,
        ));
    } else if let Some(path) = &endpoint.client_secret_file {
        form.push((
            "client_secret",
            read_secret_file(path, "--client-secret-file")?,
        ));
    } else if let Ok(secret) = std::env::var(SECRET_ENV) {
        let secret = secret.trim().to_owned();
        if secret.is_empty() {
            return Err(CliError::Usage(format!("{SECRET_ENV} is set but empty")));
        }
        form.push(("client_secret", secret));
    }
    Ok(form)
}

/// The trimmed content of a file holding one credential; empty is refused.
fn read_secret_file(path: &Path, flag: &str) -> Result<String, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Io {
        doing: "reading",
        path: path.to_owned(),
        source,
    })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(CliError::Usage(format!(
            "{flag} {}: the file is empty",
            path.display()
        )));
    }
    Ok(text.to_owned())
}

fn read_stdin(what: &str) -> Result<String, CliError> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|source| CliError::Io {
            doing: "reading",
            path: PathBuf::from("stdin"),
            source,
        })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(CliError::Usage(format!(
            "{what} is read from stdin (or --refresh-token-file FILE), and stdin was empty"
        )));
    }
    Ok(text.to_owned())
}

/// `{issuer}/token`, on `--server`'s origin when given.
fn token_url(endpoint: &Endpoint) -> Result<url::Url, CliError> {
    let issuer = &endpoint.issuer;
    if !matches!(issuer.scheme(), "http" | "https") {
        return Err(CliError::Usage(format!(
            "--issuer {issuer}: not an http(s) URL"
        )));
    }
    let mut url = match &endpoint.server {
        Some(server) => {
            let mut url = server.clone();
            url.set_path(issuer.path());
            url
        }
        None => issuer.clone(),
    };
    let path = format!("{}/token", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

fn send(
    endpoint: &Endpoint,
    mut form: Vec<(&'static str, String)>,
    credentials: Vec<(&'static str, String)>,
) -> Result<(), CliError> {
    let url = token_url(endpoint)?;
    form.extend(credentials);
    let http = client()?;
    let (status, headers, body) = answer_of(http.post(url.clone()).form(&form), &url)?;
    let cookie = refresh_cookie(&headers);
    let answer = serde_json::from_slice::<Value>(&body).ok();
    if !status.is_success() {
        return Err(refusal(&url, status, answer));
    }
    let Some(Value::Object(mut answer)) = answer else {
        return Err(unavailable(format!(
            "{url} answered {status} without a JSON object: is it a token endpoint?"
        )));
    };
    // A Cookie client's refresh token is in the cookie, not the body: show it as a body's
    // would be, and say so.
    if let Some(token) = cookie
        && !answer.contains_key("refresh_token")
    {
        eprintln!(
            "note: the refresh token came as the cookie {COOKIE_NAME} (the client's delivery is Cookie); shown as refresh_token"
        );
        answer.insert("refresh_token".into(), Value::String(token));
    }
    match &endpoint.output {
        None => println!("{}", Value::Object(answer)),
        Some(field) => match answer.get(field) {
            Some(Value::String(text)) => println!("{text}"),
            Some(other) => println!("{other}"),
            None => {
                let fields: Vec<&str> = answer.keys().map(String::as_str).collect();
                return Err(CliError::Refused(format!(
                    "the answer has no field {field:?}; it has {}",
                    fields.join(", ")
                )));
            }
        },
    }
    Ok(())
}

fn client() -> Result<reqwest::Client, CliError> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        // A token endpoint never redirects; following a 307/308 would send the form, and
        // the client secret or assertion in it, again to wherever the answer points.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| unavailable(format!("an HTTP client: {e}")))
}

/// Sends `request` (to `url`) and reads its whole answer; failing to, an
/// [`ExitCode::Unavailable`] error naming `url`.
fn answer_of(
    request: reqwest::RequestBuilder,
    url: &url::Url,
) -> Result<
    (
        reqwest::StatusCode,
        reqwest::header::HeaderMap,
        bytes::Bytes,
    ),
    CliError,
> {
    error::runtime()?.block_on(async {
        let response = request
            .send()
            .await
            .map_err(|e| unavailable(format!("{url}: {}", without_url(&e))))?;
        let (status, headers) = (response.status(), response.headers().clone());
        let body = response
            .bytes()
            .await
            .map_err(|e| unavailable(format!("{url}: reading the answer: {}", without_url(&e))))?;
        Ok((status, headers, body))
    })
}

/// The value of the refresh cookie a `Set-Cookie` header sets, if any.
fn refresh_cookie(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .filter_map(|value| value.split(';').next()?.split_once('='))
        .find(|(name, value)| name.trim() == COOKIE_NAME && !value.is_empty())
        .map(|(_, value)| value.trim().to_owned())
}

/// reqwest's errors name the URL, which the message already does.
fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(&format!(" for url ({url})"), "");
    }
    match std::error::Error::source(error) {
        Some(source) => format!("{text}: {source}"),
        None => text,
    }
}

fn unavailable(message: String) -> CliError {
    CliError::Answered {
        code: ExitCode::Unavailable as u8,
        message,
    }
}

/// A non-2xx answer: the OAuth error and its description, and whether to retry.
fn refusal(url: &url::Url, status: reqwest::StatusCode, answer: Option<Value>) -> CliError {
    let field = |name: &str| {
        answer
            .as_ref()
            .and_then(|a| a.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let retry = status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
    let Some(error) = field("error") else {
        return unavailable(format!(
            "{url} answered {status} without an OAuth error: is it a token endpoint?"
        ));
    };
    let description = field("error_description").unwrap_or_default();
    let message = format!("{status} {error}: {description}");
    match retry {
        true => unavailable(message),
        false => CliError::Answered {
            code: ExitCode::Refused as u8,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(issuer: &str, server: Option<&str>) -> Endpoint {
        Endpoint {
            issuer: issuer.parse().unwrap(),
            server: server.map(|s| s.parse().unwrap()),
            client: "auth/web".into(),
            client_secret_file: None,
            client_assertion_file: None,
            output: None,
        }
    }

    #[test]
    fn the_token_url_keeps_the_issuers_path_on_the_server_asked_for() {
        let url = |issuer, server| token_url(&endpoint(issuer, server)).unwrap().to_string();
        assert_eq!(
            url("https://id.example.com/auth/web", None),
            "https://id.example.com/auth/web/token"
        );
        assert_eq!(
            url(
                "https://id.example.com/auth/web/",
                Some("http://127.0.0.1:8080")
            ),
            "http://127.0.0.1:8080/auth/web/token"
        );
        assert_eq!(
            url("https://id.example.com", None),
            "https://id.example.com/token"
        );
        assert!(token_url(&endpoint("ftp://x/y", None)).is_err());
    }

    #[test]
    fn only_the_refresh_cookie_is_taken_from_set_cookie() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.append(
            reqwest::header::SET_COOKIE,
            "other=x; Path=/".parse().unwrap(),
        );
        assert_eq!(refresh_cookie(&headers), None);
        headers.append(
            reqwest::header::SET_COOKIE,
            format!("{COOKIE_NAME}=aprt_abc; Path=/; Secure; HttpOnly")
                .parse()
                .unwrap(),
        );
        assert_eq!(refresh_cookie(&headers).as_deref(), Some("aprt_abc"));
    }
}

#[derive(Args)]
pub(crate) struct SessionsArgs {
    /// The TokenClient, as NAMESPACE/NAME.
    #[arg(value_name = "NAMESPACE/NAME")]
    client: String,
    /// The user whose sessions these are (the `sub` of their tokens).
    #[arg(long)]
    subject: String,
    /// The admin listener of the server (`--admin-listen`; on a cluster
    /// `kubectl -n authplane port-forward deploy/authplane 9090` first).
    #[arg(long, value_name = "URL")]
    server: url::Url,
    /// End every session: each family revoked, each session's Revocation written.
    #[arg(long)]
    revoke: bool,
    /// Print the server's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn sessions(args: SessionsArgs) -> Result<(), CliError> {
    let id = parse_id(&args.client, "NAMESPACE/NAME")?;
    let mut url = args.server.clone();
    url.set_path(&format!(
        "{}/sessions/{}/{}",
        url.path().trim_end_matches('/'),
        id.namespace,
        id.name
    ));
    url.query_pairs_mut()
        .clear()
        .append_pair("subject", &args.subject);
    if args.revoke {
        url.query_pairs_mut().append_pair("revoke", "true");
    }
    let http = client()?;
    let request = match args.revoke {
        true => http.post(url.clone()),
        false => http.get(url.clone()),
    };
    let (status, _, body) = answer_of(request, &url)?;
    let answer = serde_json::from_slice::<Value>(&body).ok();
    if !status.is_success() {
        let why = answer
            .as_ref()
            .and_then(|a| a["error"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| {
                format!(
                    "not an admin listener's answer (is {} the --admin-listen address?)",
                    args.server
                )
            });
        let message = format!("{status}: {why}");
        return Err(
            match status.is_server_error()
                || status == reqwest::StatusCode::NOT_FOUND && answer.is_none()
            {
                true => unavailable(message),
                false => CliError::Answered {
                    code: ExitCode::Refused as u8,
                    message,
                },
            },
        );
    }
    let Some(answer) = answer else {
        return Err(unavailable(format!("{url} answered {status} without JSON")));
    };
    if args.json {
        println!("{answer}");
        return Ok(());
    }
    let sessions = answer["sessions"].as_array().cloned().unwrap_or_default();
    let field = |session: &Value, name: &str| session[name].as_str().unwrap_or("-").to_owned();
    println!("SID\tSTARTED\tLAST USED\tEXPIRES\tIDLE EXPIRES\tREVOKED");
    for session in &sessions {
        let revoked = match &session["revoked"] {
            Value::Object(revoked) => format!(
                "{} ({})",
                revoked.get("at").and_then(Value::as_str).unwrap_or("-"),
                revoked
                    .get("because")
                    .and_then(Value::as_str)
                    .unwrap_or("-")
            ),
            _ => "no".to_owned(),
        };
        println!(
            "{}\t{}\t{}\t{}\t{}\t{revoked}",
            field(session, "sid"),
            field(session, "startedAt"),
            field(session, "lastUsedAt"),
            field(session, "expiresAt"),
            field(session, "idleExpiresAt"),
        );
    }
    match args.revoke {
        true => eprintln!(
            "{} session(s) of {:?} of TokenClient {id} ended: refresh refused, access tokens refused at every gateway once the Revocations are in force",
            sessions.len(),
            args.subject
        ),
        false => eprintln!(
            "{} session(s) of {:?} of TokenClient {id}",
            sessions.len(),
            args.subject
        ),
    }
    Ok(())
}
