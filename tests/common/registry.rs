//! A real registry for the tests: Debian's `docker-registry` (the CNCF distribution
//! registry) on 127.0.0.1, with plain http, optionally behind htpasswd basic auth, and a
//! client that pushes images the tests build.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{
    oci::{Blob, Image},
    token::TokenIssuer,
};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

pub enum Auth {
    None,
    /// htpasswd basic auth with one user.
    Basic {
        user: String,
        password: String,
    },
    /// Bearer tokens from `issuer`; the test's own pushes use a token it mints.
    Token {
        issuer: TokenIssuer,
        push_repository: String,
    },
}

pub struct Registry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub host: String,
    http: reqwest::Client,
    auth: Option<(String, String)>,
    bearer: Option<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Registry {
    pub async fn start() -> Registry {
        Self::start_with(Auth::None).await
    }

    pub async fn start_with(auth: Auth) -> Registry {
        assert!(
            std::path::Path::new(REGISTRY_BIN).is_file(),
            "{REGISTRY_BIN} is missing: apt-get install docker-registry (tests/run.sh does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("strata-registry-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let mut auth_yaml = String::new();
        let mut creds = None;
        let mut bearer = None;
        if let Auth::Token {
            issuer,
            push_repository,
        } = &auth
        {
            let bundle = dir.path().join("issuer.pem");
            std::fs::write(&bundle, &issuer.cert_pem).expect("cert bundle");
            auth_yaml = format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                issuer.realm(),
                super::token::SERVICE,
                super::token::ISSUER,
                bundle.display()
            );
            bearer = Some(issuer.mint(push_repository, &["pull", "push"]));
        }
        if let Auth::Basic { user, password } = &auth {
            let htpasswd = dir.path().join("htpasswd");
            let status = Command::new("htpasswd")
                .args(["-Bbc"])
                .arg(&htpasswd)
                .args([user, password])
                .stderr(Stdio::null())
                .status()
                .expect("htpasswd (apache2-utils) must be installed");
            assert!(status.success(), "htpasswd failed");
            auth_yaml = format!(
                "auth:\n  htpasswd:\n    realm: strata-test\n    path: {}\n",
                htpasswd.display()
            );
            creds = Some((user.clone(), password.clone()));
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n  secret: strata-test-secret\n{auth_yaml}",
            dir.path().join("data").display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut registry = Registry {
            child: Some(child),
            dir,
            host,
            http: reqwest::Client::new(),
            auth: creds,
            bearer,
        };
        registry.wait_ready().await;
        registry
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("docker-registry exited ({status}):\n{}", self.logs());
            }
            if let Ok(resp) = self
                .http
                .get(format!("http://{}/v2/", self.host))
                .send()
                .await
                && (resp.status().is_success() || resp.status() == 401)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many times the registry served `GET` of this blob, from its access log.
    pub fn blob_gets(&self, repo: &str, digest: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/{digest} ");
        self.logs().lines().filter(|l| l.contains(&needle)).count()
    }

    /// Digests of the blobs uploaded to `repo` (upload sessions completed with 201), in order,
    /// from the access log.
    pub fn blob_uploads(&self, repo: &str) -> Vec<String> {
        self.completed(&format!("\"PUT /v2/{repo}/blobs/uploads/"), "digest=")
    }

    /// Digests of the blobs mounted into `repo` from another repository (201 answers).
    pub fn blob_mounts(&self, repo: &str) -> Vec<String> {
        self.completed(&format!("\"POST /v2/{repo}/blobs/uploads/"), "mount=")
    }

    /// The `param` values of requests starting with `request` that got 201 Created.
    fn completed(&self, request: &str, param: &str) -> Vec<String> {
        self.logs()
            .lines()
            .filter_map(|l| l.split_once(request).map(|(_, rest)| rest))
            .filter(|rest| {
                rest.split("\" ")
                    .nth(1)
                    .is_some_and(|s| s.starts_with("201 "))
            })
            .filter_map(|rest| {
                let query = rest.split_whitespace().next()?.split_once('?')?.1;
                let value = query.split('&').find_map(|kv| kv.strip_prefix(param))?;
                Some(value.replace("%3A", ":").replace("%3a", ":"))
            })
            .collect()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match (&self.auth, &self.bearer) {
            (Some((user, password)), _) => request.basic_auth(user, Some(password)),
            (None, Some(token)) => request.bearer_auth(token),
            (None, None) => request,
        }
    }

    /// Uploads a blob (monolithic upload).
    pub async fn push_blob(&self, repo: &str, blob: &Blob) {
        let start = self
            .request(
                reqwest::Method::POST,
                &format!("http://{}/v2/{repo}/blobs/uploads/", self.host),
            )
            .send()
            .await
            .expect("start upload");
        assert_eq!(
            start.status(),
            202,
            "start upload: {:?}",
            start.text().await
        );
        let location = start.headers()["location"]
            .to_str()
            .expect("location")
            .to_string();
        let url = if location.starts_with("http") {
            location
        } else {
            format!("http://{}{location}", self.host)
        };
        let sep = if url.contains('?') { '&' } else { '?' };
        let put = self
            .request(
                reqwest::Method::PUT,
                &format!("{url}{sep}digest={}", blob.digest),
            )
            .header("content-type", "application/octet-stream")
            .body(blob.bytes.clone())
            .send()
            .await
            .expect("upload");
        assert_eq!(
            put.status(),
            201,
            "upload {}: {:?}",
            blob.digest,
            put.text().await
        );
    }

    /// Uploads a manifest or index under `reference` (a tag or digest).
    pub async fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let put = self
            .request(
                reqwest::Method::PUT,
                &format!("http://{}/v2/{repo}/manifests/{reference}", self.host),
            )
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .expect("put manifest");
        assert_eq!(put.status(), 201, "put manifest: {:?}", put.text().await);
    }

    /// Pushes every blob of `image` and its manifest as `repo:tag`.
    pub async fn push(&self, repo: &str, tag: &str, image: &Image) {
        for blob in image.blobs() {
            self.push_blob(repo, blob).await;
        }
        self.push_manifest(
            repo,
            tag,
            image.manifest_media_type(),
            &image.manifest.bytes,
        )
        .await;
    }

    /// Pushes an image of Debian's static busybox alone as `repo:v1`; returns its reference.
    pub async fn push_busybox(&self, repo: &str) -> String {
        let image = super::oci::ImageBuilder::new()
            .layer(super::oci::busybox_layer(), super::oci::Compression::Gzip)
            .build();
        self.push(repo, "v1", &image).await;
        self.reference(repo, "v1")
    }

    /// `127.0.0.1:port/repo:tag`.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
