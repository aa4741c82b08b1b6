//! A small token issuer for the registry's bearer-token flow: it signs ES256 JWTs with a
//! self-signed certificate the registry trusts (`rootcertbundle`), hands them out for
//! basic credentials or a refresh token (the OAuth2 form), and counts what it was asked.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

pub const SERVICE: &str = "strata-test-registry";
pub const ISSUER: &str = "strata-test-issuer";

struct Inner {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    user: String,
    password: String,
    refresh_token: String,
    requests: AtomicUsize,
}

#[derive(Clone)]
pub struct TokenIssuer {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
    pub cert_pem: String,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl TokenIssuer {
    /// Starts the issuer; it serves until the test's runtime ends.
    pub async fn start(user: &str, password: &str, refresh_token: &str) -> TokenIssuer {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let params =
            rcgen::CertificateParams::new(vec!["strata-test-issuer".into()]).expect("params");
        let cert = params.self_signed(&key_pair).expect("certificate");
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &SystemRandom::new(),
        )
        .expect("signing key");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let issuer = TokenIssuer {
            inner: Arc::new(Inner {
                key,
                cert_der: cert.der().to_vec(),
                user: user.into(),
                password: password.into(),
                refresh_token: refresh_token.into(),
                requests: AtomicUsize::new(0),
            }),
            addr,
            cert_pem: cert.pem(),
        };
        let serving = issuer.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let issuer = serving.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 << 10];
                    let mut len = 0;
                    // One request per connection; small enough to arrive in a few reads.
                    while len < buf.len() {
                        match stream.read(&mut buf[len..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => len += n,
                        }
                        let text = String::from_utf8_lossy(&buf[..len]);
                        if let Some(end) = text.find("\r\n\r\n") {
                            let body_len = text
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if len >= end + 4 + body_len {
                                break;
                            }
                        }
                    }
                    let request = String::from_utf8_lossy(&buf[..len]).into_owned();
                    let (status, body) = issuer.answer(&request);
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        issuer
    }

    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// How many token requests the issuer has answered.
    pub fn requests(&self) -> usize {
        self.inner.requests.load(Ordering::SeqCst)
    }

    /// A token granting `actions` on `repository`.
    pub fn mint(&self, repository: &str, actions: &[&str]) -> String {
        let grants: Vec<(String, Vec<String>)> = if repository.is_empty() {
            vec![]
        } else {
            vec![(
                repository.to_string(),
                actions.iter().map(|a| a.to_string()).collect(),
            )]
        };
        self.mint_grants(&grants)
    }

    /// A token granting each repository its actions.
    fn mint_grants(&self, grants: &[(String, Vec<String>)]) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.inner.cert_der)],
        });
        let access: Vec<serde_json::Value> = grants
            .iter()
            .map(|(name, actions)| {
                serde_json::json!({"type": "repository", "name": name, "actions": actions})
            })
            .collect();
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": self.inner.user, "aud": SERVICE,
            "exp": now + 600, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", self.requests()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let signature = self
            .inner
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .expect("sign");
        format!("{signing_input}.{}", b64url(signature.as_ref()))
    }

    fn answer(&self, request: &str) -> (&'static str, String) {
        self.inner.requests.fetch_add(1, Ordering::SeqCst);
        let first = request.lines().next().unwrap_or_default();
        let query = first
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.split_once('?'))
            .map(|(_, q)| q)
            .unwrap_or("");
        let body = request.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        let params: Vec<(String, String)> = query
            .split('&')
            .chain(body.split('&'))
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), percent_decode(v)))
            .collect();
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let authorised = if first.starts_with("POST") {
            param("grant_type").as_deref() == Some("refresh_token")
                && param("refresh_token").as_deref() == Some(self.inner.refresh_token.as_str())
        } else {
            let expected = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.inner.user, self.inner.password));
            request.lines().any(|l| {
                l.to_ascii_lowercase().starts_with("authorization:")
                    && l.trim_end().ends_with(&format!("Basic {expected}"))
            })
        };
        let has_credentials = first.starts_with("POST")
            || request
                .lines()
                .any(|l| l.to_ascii_lowercase().starts_with("authorization:"));
        if has_credentials && !authorised {
            return (
                "401 Unauthorized",
                r#"{"details":"bad credentials"}"#.into(),
            );
        }
        // Anonymous callers get a token that grants nothing; a user gets what each `scope`
        // (`repository:NAME:ACTIONS`, the parameter repeated for several) asks for.
        let grants: Vec<(String, Vec<String>)> = if authorised {
            params
                .iter()
                .filter(|(k, _)| k == "scope")
                .filter_map(|(_, scope)| {
                    let mut parts = scope.splitn(3, ':');
                    (parts.next() == Some("repository")).then_some(())?;
                    let name = parts.next()?.to_string();
                    let actions = parts.next()?.split(',').map(str::to_string).collect();
                    Some((name, actions))
                })
                .collect()
        } else {
            vec![]
        };
        let token = self.mint_grants(&grants);
        (
            "200 OK",
            serde_json::json!({"token": token, "access_token": token}).to_string(),
        )
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.replace('+', " ").into_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| std::str::from_utf8(&bytes[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
