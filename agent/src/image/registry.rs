//! A client for the OCI distribution API: manifests and blobs to pull, blob existence checks,
//! cross-repository mounts, uploads and manifests to push; with anonymous, basic and
//! bearer-token authentication, registry mirrors (pull only), plain http for local
//! registries, and retries with back-off on transient failures.
//!
//! Written on reqwest rather than a registry crate so that the agent controls what matters
//! to a node: mirrors tried in order, a progress timeout instead of a deadline, streaming
//! bodies with no buffering, and errors that say which registry did what.
//!
//! Nothing a registry sends is trusted: error bodies and token answers are read only in
//! part and only for so long, and credentials go only to the endpoint they were given
//! for (same scheme, host and port), over plain http only to loopback or where the
//! config asks for plain http. Redirects are reqwest's: it drops Authorization when the
//! scheme, host or port changes (`remove_sensitive_headers` in its `redirect.rs`).

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use base64::Engine as _;
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url, header};
use serde::Deserialize;
use tokio::time::Instant;

use super::digest::Digest;
use crate::config::RegistryConfig;

const RETRIES: u32 = 3;
const USER_AGENT: &str = concat!("strata/", env!("CARGO_PKG_VERSION"));
/// The most of an error answer's body read, for the registry's message; the rest is never
/// read.
const ERROR_BODY_LIMIT: usize = 4 << 10;
/// The longest an error answer's body is waited for (at most the answer timeout); what
/// arrived by then is used.
const ERROR_BODY_TIME: Duration = Duration::from_secs(5);
/// The largest token-service answer accepted; real ones are a few KiB.
const TOKEN_LIMIT: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Protocol(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Worth another try on the same or the next endpoint.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

/// Credentials for one pull, from the CRI `AuthConfig`.
#[derive(Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// Exchanged at the token service for an access token (OAuth2 refresh token).
    pub identity_token: String,
    /// Sent to the registry as a bearer token as it is.
    pub registry_token: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Credentials {
    fn has_password(&self) -> bool {
        !self.username.is_empty() || !self.password.is_empty()
    }
}

/// Where requests for one registry go, in order: mirrors first, then the registry itself.
#[derive(Debug, Clone)]
struct Endpoint {
    base: String,
    mirror: bool,
    /// The config asks for plain http to it (`plain_http = true`, or a mirror given as
    /// `http://`): credentials may then go in clear text, to it and its token service.
    plain_ok: bool,
}

pub struct RegistryClient {
    http: reqwest::Client,
    insecure: reqwest::Client,
    hosts: BTreeMap<String, RegistryConfig>,
    /// How long a registry may take to answer a request whose body is already sent.
    answer_timeout: Duration,
}

/// Whether registry `host` (`name[:port]`) is on this machine.
fn is_local(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        // `[::1]` alone: the colons are the address's.
        Some((name, port)) if !port.contains(']') => name,
        _ => host,
    };
    is_loopback_name(name)
}

/// `localhost` or a loopback address (IPv6 in brackets or not).
fn is_loopback_name(name: &str) -> bool {
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether credentials may travel to `url` at all: over TLS, to loopback, or in clear
/// text where the config asks for plain http (`plain_ok`).
fn private_enough(url: &Url, plain_ok: bool) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => plain_ok || url.host_str().is_some_and(is_loopback_name),
        _ => false,
    }
}

/// Whether credentials given for the endpoint at `base` may go with a request to `url`:
/// only to the same scheme, host and port (an upload location elsewhere gets none, as
/// with containerd), and only if [`private_enough`].
fn credentials_allowed(base: &str, url: &str, plain_ok: bool) -> bool {
    let (Ok(base), Ok(url)) = (Url::parse(base), Url::parse(url)) else {
        return false;
    };
    base.scheme() == url.scheme()
        && base.host_str() == url.host_str()
        && base.port_or_known_default() == url.port_or_known_default()
        && private_enough(&url, plain_ok)
}

/// `scheme://host[:port]` of a URL, for messages (a location's path and query may carry
/// session state).
fn origin_of(url: &str) -> String {
    match Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", u.scheme()),
            (Some(host), None) => format!("{}://{host}", u.scheme()),
            _ => u.scheme().to_string(),
        },
        Err(_) => "an invalid URL".into(),
    }
}

impl RegistryClient {
    pub fn new(
        hosts: BTreeMap<String, RegistryConfig>,
        answer_timeout: Duration,
    ) -> Result<RegistryClient> {
        // Several clients may race to install it; the first one wins, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let build = |insecure: bool| {
            reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .connect_timeout(Duration::from_secs(15))
                .pool_idle_timeout(Duration::from_secs(30))
                .tls_danger_accept_invalid_certs(insecure)
                .build()
                .map_err(|e| Error::Protocol(format!("building the HTTP client: {e}")))
        };
        Ok(RegistryClient {
            http: build(false)?,
            insecure: build(true)?,
            hosts,
            answer_timeout,
        })
    }

    fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let config = self.hosts.get(registry);
        let mut endpoints: Vec<Endpoint> = config
            .map(|c| c.mirrors.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|m| Endpoint {
                plain_ok: m.starts_with("http://"),
                base: m.trim_end_matches('/').to_string(),
                mirror: true,
            })
            .collect();
        let configured = config.and_then(|c| c.plain_http);
        let plain = configured.unwrap_or_else(|| is_local(registry));
        let host = if registry == super::reference::DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            registry
        };
        endpoints.push(Endpoint {
            base: format!("{}://{host}", if plain { "http" } else { "https" }),
            mirror: false,
            plain_ok: configured == Some(true),
        });
        endpoints
    }

    /// A session for pulling from one repository.
    pub fn repository(
        self: &Arc<Self>,
        registry: &str,
        repository: &str,
        credentials: Credentials,
    ) -> Repository {
        self.session(registry, repository, credentials, "pull")
    }

    /// A session for pushing to one repository: tokens are asked for with push access, and
    /// only the registry itself is used (mirrors are read-only).
    pub fn repository_for_push(
        self: &Arc<Self>,
        registry: &str,
        repository: &str,
        credentials: Credentials,
    ) -> Repository {
        let mut session = self.session(registry, repository, credentials, "pull,push");
        session.endpoints.retain(|e| !e.mirror);
        session
    }

    fn session(
        self: &Arc<Self>,
        registry: &str,
        repository: &str,
        credentials: Credentials,
        access: &'static str,
    ) -> Repository {
        let insecure = self
            .hosts
            .get(registry)
            .is_some_and(|c| c.insecure_skip_verify);
        Repository {
            client: self.clone(),
            http: if insecure {
                self.insecure.clone()
            } else {
                self.http.clone()
            },
            registry: registry.to_string(),
            repository: repository.to_string(),
            endpoints: self.endpoints(registry),
            access,
            credentials,
            tokens: tokio::sync::Mutex::new(HashMap::new()),
            unreachable: tokio::sync::Mutex::new(Default::default()),
        }
    }
}

/// How to authenticate to one endpoint, learnt from its challenge.
#[derive(Clone)]
enum Auth {
    Basic,
    Bearer(String),
}

pub struct Repository {
    client: Arc<RegistryClient>,
    http: reqwest::Client,
    registry: String,
    repository: String,
    endpoints: Vec<Endpoint>,
    /// The access asked of a token service for this repository: "pull" or "pull,push".
    access: &'static str,
    credentials: Credentials,
    tokens: tokio::sync::Mutex<HashMap<String, Auth>>,
    unreachable: tokio::sync::Mutex<std::collections::HashSet<String>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

impl Repository {
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// GETs the manifest `reference` (a tag or digest) with the given Accept header.
    pub async fn manifest(&self, reference: &str, accept: &str) -> Result<Response> {
        self.get(
            &format!("manifests/{reference}"),
            Some(accept),
            &format!("manifest {}:{reference}", self.name()),
        )
        .await
    }

    /// GETs blob `digest`; the body streams.
    pub async fn blob(&self, digest: &Digest) -> Result<Response> {
        self.get(
            &format!("blobs/{digest}"),
            None,
            &format!("blob {digest} of {}", self.name()),
        )
        .await
    }

    /// Tries each endpoint in turn; the registry's own answer (the last) is the one
    /// reported when all fail.
    /// A mirror gets one try (the next endpoint is the retry), and one found unreachable
    /// is skipped for the rest of this session.
    async fn get(&self, path: &str, accept: Option<&str>, what: &str) -> Result<Response> {
        let mut last = None;
        for endpoint in &self.endpoints {
            if endpoint.mirror && self.unreachable.lock().await.contains(&endpoint.base) {
                continue;
            }
            let attempts = if endpoint.mirror { 1 } else { RETRIES };
            match self.get_from(endpoint, path, accept, what, attempts).await {
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    if endpoint.mirror {
                        tracing::info!(mirror = %endpoint.base, error = %e, "mirror failed; trying the next endpoint");
                        if e.is_transient() {
                            self.unreachable.lock().await.insert(endpoint.base.clone());
                        }
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Protocol("no endpoint".into())))
    }

    async fn get_from(
        &self,
        endpoint: &Endpoint,
        path: &str,
        accept: Option<&str>,
        what: &str,
        attempts: u32,
    ) -> Result<Response> {
        let url = format!("{}/v2/{}/{path}", endpoint.base, self.repository);
        self.call(
            endpoint,
            Method::GET,
            &url,
            what,
            attempts,
            &|request| match accept {
                Some(accept) => request.header(header::ACCEPT, accept),
                None => request,
            },
        )
        .await
    }

    /// Sends a request built by `build` (again for each attempt), answering one
    /// authentication challenge and retrying transient failures up to `attempts` times.
    /// Any 2xx is success; the rest become errors that name `what`. A request whose body
    /// cannot be sent twice (`attempts` 0) gets one try, and is not re-sent after a challenge.
    async fn call(
        &self,
        endpoint: &Endpoint,
        method: Method,
        url: &str,
        what: &str,
        attempts: u32,
        build: &(dyn Fn(RequestBuilder) -> RequestBuilder + Sync),
    ) -> Result<Response> {
        let replayable = attempts > 0;
        // An upload location may name another server: it gets no credentials, and its
        // challenges are not answered (they could send them anywhere).
        let scoped = credentials_allowed(&endpoint.base, url, endpoint.plain_ok);
        let server = if scoped {
            endpoint.base.clone()
        } else {
            tracing::debug!(registry = %endpoint.base, to = %origin_of(url), "sending no credentials outside the registry");
            format!("{} (at {})", endpoint.base, origin_of(url))
        };
        let mut attempt = 0;
        let mut authenticated = false;
        loop {
            let request = build(self.http.request(method.clone(), url));
            let request = if scoped {
                self.authorize(request, &endpoint.base).await
            } else {
                request
            };
            // A streamed body takes as long as it takes (its sender watches its progress);
            // otherwise the answer must come within the timeout.
            let result = if replayable {
                let timeout = self.client.answer_timeout;
                match tokio::time::timeout(timeout, request.send()).await {
                    Ok(sent) => sent.map_err(|e| crate::report::error_line(&e)),
                    Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
                }
            } else {
                request
                    .send()
                    .await
                    .map_err(|e| crate::report::error_line(&e))
            };
            let retry = match result {
                Err(e) => {
                    Error::Unavailable(format!("{what}: registry {server} is unreachable: {e}"))
                }
                Ok(resp) if resp.status().is_success() => return Ok(resp),
                Ok(resp)
                    if resp.status() == StatusCode::UNAUTHORIZED
                        && !authenticated
                        && replayable
                        && scoped =>
                {
                    authenticated = true;
                    self.authenticate(endpoint, &resp).await?;
                    continue;
                }
                Ok(resp) => {
                    let status = resp.status();
                    let detail = error_detail(resp, self.client.answer_timeout).await;
                    match status {
                        StatusCode::NOT_FOUND => {
                            return Err(Error::NotFound(format!("{what}: not found{detail}")));
                        }
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                            return Err(Error::Unauthorized(format!(
                                "{what}: access denied by {server} ({status}){detail}"
                            )));
                        }
                        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                            Error::Unavailable(format!("{what}: {server} answered {s}{detail}"))
                        }
                        s => {
                            return Err(Error::Protocol(format!(
                                "{what}: {server} answered {s}{detail}"
                            )));
                        }
                    }
                }
            };
            attempt += 1;
            if attempt >= attempts {
                return Err(retry);
            }
            let pause = Duration::from_millis(200 * 4u64.pow(attempt - 1));
            tracing::debug!(error = %retry, ?pause, "retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// The registry itself (pushes never go to a mirror).
    fn origin(&self) -> Result<&Endpoint> {
        self.endpoints
            .iter()
            .rfind(|e| !e.mirror)
            .ok_or_else(|| Error::Protocol("no endpoint".into()))
    }

    fn url(&self, endpoint: &Endpoint, path: &str) -> String {
        format!("{}/v2/{}/{path}", endpoint.base, self.repository)
    }

    /// Whether the repository has blob `digest` (HEAD).
    pub async fn has_blob(&self, digest: &Digest) -> Result<bool> {
        let origin = self.origin()?;
        let what = format!("blob {digest} of {}", self.name());
        let url = self.url(origin, &format!("blobs/{digest}"));
        match self
            .call(origin, Method::HEAD, &url, &what, RETRIES, &|r| r)
            .await
        {
            Ok(_) => Ok(true),
            Err(Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Asks the registry to mount blob `digest` from repository `from` of the same
    /// registry. A registry that cannot (it lacks the blob there, or does not mount) opens
    /// an upload session instead, which is returned.
    pub async fn mount_blob(&self, digest: &Digest, from: &str) -> Result<Mount> {
        let origin = self.origin()?;
        let what = format!("mounting blob {digest} from {from} into {}", self.name());
        let url = self.url(origin, "blobs/uploads/");
        let query = [("mount", digest.to_string()), ("from", from.to_string())];
        let resp = self
            .call(origin, Method::POST, &url, &what, RETRIES, &|r| {
                r.query(&query).header(header::CONTENT_LENGTH, 0)
            })
            .await?;
        if resp.status() == StatusCode::CREATED {
            return Ok(Mount::Mounted);
        }
        Ok(Mount::Upload(self.location(origin, &resp, &what)?))
    }

    /// Opens an upload session; returns its location.
    pub async fn start_upload(&self, digest: &Digest) -> Result<String> {
        let origin = self.origin()?;
        let what = format!("starting the upload of blob {digest} to {}", self.name());
        let url = self.url(origin, "blobs/uploads/");
        let resp = self
            .call(origin, Method::POST, &url, &what, RETRIES, &|r| {
                r.header(header::CONTENT_LENGTH, 0)
            })
            .await?;
        self.location(origin, &resp, &what)
    }

    /// Completes an upload session with the whole blob in one request (the body streams).
    /// The registry checks the digest. Sent once: the caller retries the whole blob.
    pub async fn put_blob(
        &self,
        location: &str,
        digest: &Digest,
        size: u64,
        body: reqwest::Body,
    ) -> Result<()> {
        let origin = self.origin()?;
        let what = format!("uploading blob {digest} to {}", self.name());
        let body = std::sync::Mutex::new(Some(body));
        let digest_param = [("digest", digest.to_string())];
        let resp = self
            .call(origin, Method::PUT, location, &what, 0, &|r| {
                let r = r
                    .query(&digest_param)
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_LENGTH, size);
                match body.lock().ok().and_then(|mut b| b.take()) {
                    Some(body) => r.body(body),
                    None => r,
                }
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(Error::Protocol(format!(
                "{what}: {} answered {} where 201 was expected",
                origin.base,
                resp.status()
            )));
        }
        Ok(())
    }

    /// PUTs a manifest under `reference` (a tag or digest); returns the digest the registry
    /// reports for it, if it does.
    pub async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Option<String>> {
        let origin = self.origin()?;
        let what = format!("manifest {}:{reference}", self.name());
        let url = self.url(origin, &format!("manifests/{reference}"));
        let body = bytes::Bytes::copy_from_slice(bytes);
        let resp = self
            .call(origin, Method::PUT, &url, &what, RETRIES, &|r| {
                r.header(header::CONTENT_TYPE, media_type)
                    .body(body.clone())
            })
            .await?;
        Ok(resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string))
    }

    /// The absolute URL of an upload session from a response's `Location`, which may be
    /// relative to the registry.
    fn location(&self, origin: &Endpoint, resp: &Response, what: &str) -> Result<String> {
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Error::Protocol(format!(
                    "{what}: {} answered {} without a Location",
                    origin.base,
                    resp.status()
                ))
            })?;
        Ok(resolve_location(&origin.base, location))
    }

    async fn authorize(
        &self,
        request: reqwest::RequestBuilder,
        base: &str,
    ) -> reqwest::RequestBuilder {
        if !self.credentials.registry_token.is_empty() {
            return request.bearer_auth(&self.credentials.registry_token);
        }
        match self.tokens.lock().await.get(base) {
            Some(Auth::Bearer(token)) => request.bearer_auth(token),
            Some(Auth::Basic) => {
                request.basic_auth(&self.credentials.username, Some(&self.credentials.password))
            }
            None => request,
        }
    }

    /// Answers a 401 challenge: `Basic` uses the credentials as they are; `Bearer` fetches
    /// a token for pulling this repository from the named token service.
    async fn authenticate(&self, endpoint: &Endpoint, challenge: &Response) -> Result<()> {
        let base = endpoint.base.as_str();
        let header = challenge
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let (scheme, params) = parse_challenge(&header);
        let auth = match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                if !self.credentials.has_password() {
                    return Err(Error::Unauthorized(format!(
                        "registry {base} requires credentials for {}",
                        self.name()
                    )));
                }
                Auth::Basic
            }
            "bearer" => Auth::Bearer(self.fetch_token(endpoint, &params).await?),
            _ => {
                return Err(Error::Unauthorized(format!(
                    "registry {base} asked for authentication this client does not speak: {header:?}"
                )));
            }
        };
        self.tokens.lock().await.insert(base.to_string(), auth);
        Ok(())
    }

    /// Asks the token service a challenge names for a token. The request and its answer
    /// are bounded: the answer timeout for both together, [`TOKEN_LIMIT`] bytes of answer.
    /// The token service may be elsewhere (auth.docker.io for Docker Hub), but the
    /// credentials go to it in clear text only where they would go to the registry.
    async fn fetch_token(
        &self,
        endpoint: &Endpoint,
        params: &HashMap<String, String>,
    ) -> Result<String> {
        let base = &endpoint.base;
        let realm = params.get("realm").ok_or_else(|| {
            Error::Protocol(format!(
                "registry {base} sent a bearer challenge without a realm"
            ))
        })?;
        let realm_url = Url::parse(realm).map_err(|e| {
            Error::Protocol(format!(
                "registry {base} named an invalid token service {realm:?}: {e}"
            ))
        })?;
        let send_credentials = private_enough(&realm_url, endpoint.plain_ok);
        if !send_credentials
            && (self.credentials.has_password() || !self.credentials.identity_token.is_empty())
        {
            tracing::warn!(registry = %base, token_service = %realm, "the token service speaks plain http: asking it without the credentials");
        }
        // The scopes the challenge names (several, space-separated, for a cross-repository
        // mount) and always this session's own access, so one token serves the session.
        let own = format!("repository:{}:{}", self.repository, self.access);
        let mut scopes: Vec<String> = params
            .get("scope")
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        if !scopes.contains(&own) {
            scopes.push(own);
        }
        let mut query: Vec<(&str, String)> = scopes.into_iter().map(|s| ("scope", s)).collect();
        if let Some(service) = params.get("service") {
            query.push(("service", service.clone()));
        }
        let request = if send_credentials && !self.credentials.identity_token.is_empty() {
            let mut form = query.clone();
            form.push(("grant_type", "refresh_token".into()));
            form.push(("refresh_token", self.credentials.identity_token.clone()));
            form.push(("client_id", "strata".into()));
            self.http.post(realm).form(&form)
        } else {
            let request = self.http.get(realm).query(&query);
            if send_credentials && self.credentials.has_password() {
                request.basic_auth(&self.credentials.username, Some(&self.credentials.password))
            } else {
                request
            }
        };
        let timeout = self.client.answer_timeout;
        let deadline = Instant::now() + timeout;
        let stalled = || {
            Error::Unavailable(format!(
                "token service {realm} did not answer within {} s",
                timeout.as_secs()
            ))
        };
        let too_large = || {
            Error::Protocol(format!(
                "token service {realm} sent an answer larger than {} KiB",
                TOKEN_LIMIT >> 10
            ))
        };
        let mut resp = match tokio::time::timeout_at(deadline, request.send()).await {
            Err(_) => return Err(stalled()),
            Ok(Err(e)) => {
                return Err(Error::Unavailable(format!(
                    "token service {realm} is unreachable: {}",
                    crate::report::error_line(&e)
                )));
            }
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Error::Unauthorized(format!(
                "token service {realm} refused the credentials for {} ({status})",
                self.name()
            )));
        }
        if !status.is_success() {
            return Err(Error::Unavailable(format!(
                "token service {realm} answered {status}"
            )));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > TOKEN_LIMIT as u64)
        {
            return Err(too_large());
        }
        let (bytes, end) = read_bounded(&mut resp, TOKEN_LIMIT, deadline).await;
        match end {
            BodyEnd::Complete => {}
            BodyEnd::TooLarge => return Err(too_large()),
            BodyEnd::TimedOut => return Err(stalled()),
            BodyEnd::Failed(e) => {
                return Err(Error::Unavailable(format!(
                    "token service {realm}: its answer broke off: {e}"
                )));
            }
        }
        let body: TokenResponse = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Protocol(format!("token service {realm}: malformed answer: {e}"))
        })?;
        let token = if body.token.is_empty() {
            body.access_token
        } else {
            body.token
        };
        if token.is_empty() {
            return Err(Error::Protocol(format!(
                "token service {realm} returned no token"
            )));
        }
        Ok(token)
    }
}

/// The outcome of a cross-repository mount request.
#[derive(Debug)]
pub enum Mount {
    Mounted,
    /// Not mounted; an upload session was opened at this location instead.
    Upload(String),
}

/// `Location` values are absolute URLs or paths on the registry.
fn resolve_location(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if location.starts_with('/') {
        format!("{base}{location}")
    } else {
        format!("{base}/{location}")
    }
}

/// `Bearer realm="https://auth",service="registry",scope="repository:x:pull"` →
/// ("Bearer", {realm, service, scope}). Quoted values may contain commas.
fn parse_challenge(header: &str) -> (String, HashMap<String, String>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    (scheme.to_string(), params)
}

/// How reading a body ended.
#[derive(Debug, PartialEq, Eq)]
enum BodyEnd {
    Complete,
    /// More than the limit was sent; the rest is left unread.
    TooLarge,
    TimedOut,
    Failed(String),
}

/// Reads a body chunk by chunk until it ends, passes `limit` bytes (what is kept is cut
/// to the limit; the rest is never read, and the connection goes when the response is
/// dropped), breaks off, or `deadline` passes. Returns what arrived and how it ended.
async fn read_bounded(resp: &mut Response, limit: usize, deadline: Instant) -> (Vec<u8>, BodyEnd) {
    let mut body = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Err(_) => return (body, BodyEnd::TimedOut),
            Ok(Err(e)) => return (body, BodyEnd::Failed(crate::report::error_line(&e))),
            Ok(Ok(None)) => return (body, BodyEnd::Complete),
            Ok(Ok(Some(chunk))) => {
                let room = limit.saturating_sub(body.len());
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    return (body, BodyEnd::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
}

/// The registry's own error text, if its body has one, as ": CODE message". Only the
/// first [`ERROR_BODY_LIMIT`] bytes are read, for at most [`ERROR_BODY_TIME`] (or the
/// answer timeout, if shorter): a body that is too long or too slow is cut there and
/// whatever parses of what arrived is used.
async fn error_detail(mut resp: Response, answer_timeout: Duration) -> String {
    let deadline = Instant::now() + ERROR_BODY_TIME.min(answer_timeout);
    let (bytes, _) = read_bounded(&mut resp, ERROR_BODY_LIMIT, deadline).await;
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) if !body.errors.is_empty() => {
            let parts: Vec<String> = body
                .errors
                .iter()
                .map(|e| format!("{} {}", e.code, e.message).trim().to_string())
                .collect();
            // One line, whatever the registry put in it.
            let text: String = parts
                .join("; ")
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            format!(": {text}")
        }
        _ => String::new(),
    }
}

/// Decodes the `auth` field of a docker config entry: base64 of `user:password`.
pub fn decode_auth(auth: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let (scheme, p) = parse_challenge(
            r#"Bearer realm="http://127.0.0.1:1/token",service="reg, one",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(p["realm"], "http://127.0.0.1:1/token");
        assert_eq!(p["service"], "reg, one");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (scheme, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(scheme, "Basic");
        assert_eq!(p["realm"], "Registry Realm");
    }

    #[test]
    fn local_registries_use_plain_http_and_mirrors_come_first() {
        assert!(is_local("127.0.0.1:5000"));
        assert!(is_local("localhost:5000"));
        assert!(is_local("[::1]:5000"));
        assert!(!is_local("registry.example:5000"));
        let mut hosts = BTreeMap::new();
        hosts.insert(
            "docker.io".to_string(),
            RegistryConfig {
                mirrors: vec!["http://127.0.0.1:5001/".into()],
                ..Default::default()
            },
        );
        hosts.insert(
            "registry.lan:5000".to_string(),
            RegistryConfig {
                plain_http: Some(true),
                ..Default::default()
            },
        );
        let client = RegistryClient::new(hosts, Duration::from_secs(60)).unwrap();
        let eps = client.endpoints("docker.io");
        assert_eq!(eps[0].base, "http://127.0.0.1:5001");
        assert_eq!(eps[1].base, "https://registry-1.docker.io");
        // Clear text is allowed where the config says so: an http mirror, plain_http.
        assert!(eps[0].plain_ok && !eps[1].plain_ok);
        let local = &client.endpoints("127.0.0.1:5000")[0];
        assert_eq!(local.base, "http://127.0.0.1:5000");
        assert!(!local.plain_ok, "loopback needs no permission");
        let lan = &client.endpoints("registry.lan:5000")[0];
        assert_eq!(lan.base, "http://registry.lan:5000");
        assert!(lan.plain_ok);
        assert!(is_local("[::1]"));
        assert!(is_local("LOCALHOST"));
    }

    #[test]
    fn credentials_stay_with_their_endpoint() {
        let local = "http://127.0.0.1:5000";
        assert!(credentials_allowed(
            local,
            "http://127.0.0.1:5000/v2/a/blobs/uploads/x?_state=y",
            false
        ));
        // Another port, host or scheme: an upload location elsewhere gets nothing.
        for elsewhere in [
            "http://127.0.0.1:5081/upload/evil",
            "http://localhost:5000/v2/",
            "https://127.0.0.1:5000/v2/",
            "http://127.0.0.2:5000/v2/",
            "not a url",
            "/v2/a/blobs/uploads/x",
        ] {
            assert!(!credentials_allowed(local, elsewhere, false), "{elsewhere}");
        }
        let remote = "https://registry.example";
        for same in [
            "https://registry.example/v2/x",
            "https://registry.example:443/v2/x",
            "https://REGISTRY.example/v2/x",
        ] {
            assert!(credentials_allowed(remote, same, false), "{same}");
        }
        for elsewhere in [
            "http://registry.example/v2/x",
            "http://registry.example:443/v2/x",
            "https://registry.example:8443/v2/x",
            "https://storage.example/blob",
            "https://registry.example.evil/v2/x",
            "https://registry.example@evil.example/v2/x",
        ] {
            assert!(
                !credentials_allowed(remote, elsewhere, false),
                "{elsewhere}"
            );
        }
        // Clear text to another machine only where the config asks for plain http.
        let lan = "http://registry.lan:5000";
        assert!(!credentials_allowed(
            lan,
            "http://registry.lan:5000/v2/x",
            false
        ));
        assert!(credentials_allowed(
            lan,
            "http://registry.lan:5000/v2/x",
            true
        ));
        assert!(credentials_allowed(
            "http://[::1]:5000",
            "http://[::1]:5000/v2/",
            false
        ));
    }

    #[test]
    fn token_services_get_credentials_in_clear_text_only_on_loopback_or_where_configured() {
        let url = |u: &str| Url::parse(u).unwrap();
        assert!(private_enough(&url("https://auth.docker.io/token"), false));
        assert!(!private_enough(&url("http://auth.example/token"), false));
        assert!(private_enough(&url("http://auth.example/token"), true));
        assert!(private_enough(&url("http://127.0.0.1:5001/token"), false));
        assert!(private_enough(&url("http://localhost/token"), false));
        assert!(private_enough(&url("http://[::1]:80/token"), false));
        assert!(!private_enough(&url("ftp://127.0.0.1/token"), true));
    }

    /// Serves one connection on loopback: reads the request, writes `answer`, then keeps
    /// the connection open and silent. Returns the server's URL.
    async fn serve_once(answer: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let _ = stream.write_all(&answer).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        format!("http://{addr}/token")
    }

    fn answer(head: &str, body: &[u8]) -> Vec<u8> {
        let mut bytes = head.replace('\n', "\r\n").into_bytes();
        bytes.extend_from_slice(b"\r\n");
        bytes.extend_from_slice(body);
        bytes
    }

    #[tokio::test]
    async fn bodies_are_read_in_part_and_in_time() {
        let client = RegistryClient::new(BTreeMap::new(), Duration::from_secs(1)).unwrap();
        // 11 bytes of 1000, then nothing: what arrived, once the deadline passes.
        let url = serve_once(answer(
            "HTTP/1.1 404 Not Found\nContent-Length: 1000\n",
            br#"{"errors":["#,
        ))
        .await;
        let mut resp = client.http.get(&url).send().await.unwrap();
        let started = Instant::now();
        let (bytes, end) =
            read_bounded(&mut resp, 4096, started + Duration::from_millis(300)).await;
        assert_eq!(
            (bytes.as_slice(), end),
            (&br#"{"errors":["#[..], BodyEnd::TimedOut)
        );
        assert!(started.elapsed() < Duration::from_secs(2));

        // 8 MiB: the first 4 KiB; the rest is never read.
        let url = serve_once(answer(
            "HTTP/1.1 404 Not Found\nContent-Length: 8388608\n",
            &vec![b'x'; 8 << 20],
        ))
        .await;
        let mut resp = client.http.get(&url).send().await.unwrap();
        let (bytes, end) =
            read_bounded(&mut resp, 4096, Instant::now() + Duration::from_secs(5)).await;
        assert_eq!((bytes.len(), end), (4096, BodyEnd::TooLarge));

        // A registry's error, on one line whatever it holds.
        let url = serve_once(answer(
            "HTTP/1.1 404 Not Found\nContent-Length: 61\n",
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no\nsuch"}]}"#,
        ))
        .await;
        let resp = client.http.get(&url).send().await.unwrap();
        assert_eq!(
            error_detail(resp, Duration::from_secs(1)).await,
            ": MANIFEST_UNKNOWN no such"
        );
    }

    #[tokio::test]
    async fn token_answers_are_bounded_in_size_and_time() {
        let client =
            Arc::new(RegistryClient::new(BTreeMap::new(), Duration::from_secs(1)).unwrap());
        let repo = client.repository("127.0.0.1:1", "a/b", Credentials::default());
        let endpoint = repo.endpoints[0].clone();
        let token = |url: String| {
            let params: HashMap<String, String> = [("realm".to_string(), url)].into();
            let (repo, endpoint) = (&repo, &endpoint);
            async move { repo.fetch_token(endpoint, &params).await }
        };
        let good = serve_once(answer(
            "HTTP/1.1 200 OK\nContent-Length: 15\n",
            br#"{"token":"abc"}"#,
        ))
        .await;
        assert_eq!(token(good).await.unwrap(), "abc");

        let declared =
            serve_once(answer("HTTP/1.1 200 OK\nContent-Length: 1073741824\n", b"")).await;
        let err = token(declared.clone()).await.unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{err}");
        assert!(err.to_string().contains(&declared), "{err}");
        assert!(err.to_string().contains("larger than 64 KiB"), "{err}");

        let streamed = serve_once(answer(
            "HTTP/1.1 200 OK\nConnection: close\n",
            &vec![b' '; 1 << 20],
        ))
        .await;
        let err = token(streamed).await.unwrap_err();
        assert!(err.to_string().contains("larger than 64 KiB"), "{err}");

        let started = Instant::now();
        let stalled = serve_once(answer(
            "HTTP/1.1 200 OK\nContent-Length: 1000\n",
            br#"{"token":""#,
        ))
        .await;
        let err = token(stalled.clone()).await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err}");
        assert_eq!(
            err.to_string(),
            format!("token service {stalled} did not answer within 1 s")
        );
        assert!(started.elapsed() < Duration::from_secs(3));

        let silent = serve_once(Vec::new()).await;
        let err = token(silent).await.unwrap_err();
        assert!(
            err.to_string().contains("did not answer within 1 s"),
            "{err}"
        );
    }

    #[test]
    fn upload_locations_resolve_against_the_registry() {
        let base = "http://127.0.0.1:5000";
        assert_eq!(
            resolve_location(base, "/v2/a/blobs/uploads/x?_state=y"),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/x?_state=y"
        );
        assert_eq!(
            resolve_location(base, "https://blobs.example/up/1"),
            "https://blobs.example/up/1"
        );
        assert_eq!(
            resolve_location(base, "v2/a/blobs/uploads/x"),
            "http://127.0.0.1:5000/v2/a/blobs/uploads/x"
        );
    }

    #[test]
    fn docker_auth_field_decodes() {
        assert_eq!(
            decode_auth("dXNlcjpwYTpzcw=="),
            Some(("user".into(), "pa:ss".into()))
        );
        assert_eq!(decode_auth("!!"), None);
    }
}
