//! A headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`), and a plain HTTP/1.1 client (a browser with scripts
//! off), for the web console's tests.

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    process::{Child, Command},
};

/// A browser session and the chromedriver behind it.
pub struct Browser {
    pub client: Client,
    _driver: Child,
    _profile: tempfile::TempDir,
}

fn find_binary(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(env) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    names.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

impl Browser {
    /// A fresh headless browser; `None` (the test prints SKIPPED and
    /// returns) when Chromium or its driver is not installed, except under
    /// CI, where that is a failure with the reason.
    pub async fn start(test: &str) -> Option<Self> {
        let driver = find_binary("CHROMEDRIVER", &["chromedriver"]);
        let chromium = find_binary(
            "CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
        );
        let (Some(driver), Some(chromium)) = (driver, chromium) else {
            let reason = "the console's browser tests need Debian's chromium and chromium-driver \
                          (apt-get install chromium chromium-driver; .ci/run installs them)";
            if std::env::var_os("CI").is_some() {
                panic!("{test}: {reason}");
            }
            eprintln!("SKIPPED {test}: {reason}");
            return None;
        };
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            probe.local_addr().expect("port").port()
        };
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{test}: cannot start {}: {e}", driver.display()));
        let profile = tempfile::tempdir().expect("profile dir");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--window-size=1280,900", "--no-first-run", "--disable-extensions",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        // Patient: under a loaded CI machine Chromium takes its time.
        for _ in 0..300 {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Some(Self {
                        client,
                        _driver: child,
                        _profile: profile,
                    });
                }
                Err(error) => {
                    last = Some(error);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        panic!("{test}: chromedriver did not start a session: {last:?}");
    }

    /// Signs in through the login form.
    pub async fn login(&self, base: &str, login: &str, password: &str) {
        self.client
            .goto(&format!("{base}/console/login"))
            .await
            .expect("login page");
        let form = self
            .client
            .form(Locator::Css("form.login"))
            .await
            .expect("login form");
        form.set_by_name("login", login).await.expect("login");
        form.set_by_name("password", password)
            .await
            .expect("password");
        form.submit().await.expect("submit");
        self.wait_for_text("Sign out").await;
    }

    /// The page's HTML.
    pub async fn source(&self) -> String {
        self.client.source().await.expect("page source")
    }

    /// Waits (reloading) until the page holds `text`.
    pub async fn wait_for_text(&self, text: &str) {
        for attempt in 0..300 {
            if self.source().await.contains(text) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            if attempt % 10 == 9 {
                let _ = self.client.refresh().await;
            }
        }
        panic!(
            "the page never showed {text:?}; it shows:\n{}",
            self.source().await
        );
    }

    /// Waits until the page holds `text` without reloading it: only the
    /// page's own script (live updates) can bring it.
    pub async fn wait_live(&self, text: &str) {
        for _ in 0..300 {
            if self.source().await.contains(text) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the page never showed {text:?} by itself");
    }

    /// Waits until the browser is on a page whose URL holds `part`.
    pub async fn wait_for_url(&self, part: &str) {
        for _ in 0..300 {
            if let Ok(url) = self.client.current_url().await
                && url.as_str().contains(part)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the browser never reached a URL holding {part:?}");
    }

    /// Clicks the first element `css` finds, waiting for it up to 5 s: a
    /// live page reloads itself when what it shows changes, and an element
    /// looked for during the reload is missing (or stale) for a moment.
    pub async fn click(&self, css: &str) {
        let mut last = String::new();
        for _ in 0..50 {
            match self.client.find(Locator::Css(css)).await {
                Ok(element) => match element.click().await {
                    Ok(_) => return,
                    Err(error) => last = format!("clicking {css}: {error}"),
                },
                Err(error) => last = format!("no {css}: {error}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{last}");
    }

    /// Whether `css` finds anything.
    pub async fn has(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .expect("find")
            .is_empty()
    }

    /// Saves a screenshot as `docs/console/<name>.png` when
    /// `CONSOLE_SCREENSHOTS=1` (so an ordinary test run leaves the tree
    /// alone).
    pub async fn screenshot(&self, name: &str) {
        if std::env::var("CONSOLE_SCREENSHOTS").as_deref() != Ok("1") {
            return;
        }
        let png = self.client.screenshot().await.expect("screenshot");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/console");
        std::fs::create_dir_all(&dir).expect("docs/console");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Ends the session (and Chromium with it).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// An answer of the plain client.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The value cookie `name` is set to, if this answer sets it.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case("set-cookie"))
            .filter_map(|(_, value)| value.split(';').next())
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_owned())
    }

    /// The last segment of the `Location` a redirect points to: the id of
    /// what a form created.
    pub fn location_id(&self) -> String {
        let location = self.header("location").expect("a Location header");
        location.rsplit('/').next().expect("a path").to_owned()
    }

    /// The CSRF token of the page's first form.
    pub fn csrf(&self) -> String {
        let marker = r#"name="csrf" value=""#;
        let start = self.body.find(marker).expect("a form with a CSRF token") + marker.len();
        let end = self.body[start..].find('"').expect("end of the token");
        self.body[start..start + end].to_owned()
    }
}

/// One HTTP/1.1 request over a fresh connection (no script, no cookie jar:
/// what a browser with scripts off, or a forger, sends).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: console-test/1.0\r\nConnection: close\r\n"
    );
    if let Some(cookie) = cookie {
        head.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    let body = form.unwrap_or_default();
    if form.is_some() {
        head.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(head.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("an answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// POSTs a form as the signed-in `cookie`, with the CSRF token taken from
/// the page at `form_page`, as a browser sends the form that page shows:
/// `fields` is the rest of the url-encoded body.
pub async fn submit(
    addr: SocketAddr,
    cookie: &str,
    form_page: &str,
    action: &str,
    fields: &str,
) -> Answer {
    let csrf = request(addr, "GET", form_page, Some(cookie), None)
        .await
        .csrf();
    let form = format!("csrf={csrf}&{fields}");
    request(addr, "POST", action, Some(cookie), Some(&form)).await
}

/// Percent-encodes a form value.
pub fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Signs in with the plain client; returns the `Cookie` header value of the
/// console session.
pub async fn login(addr: SocketAddr, login: &str, password: &str) -> String {
    let page = request(addr, "GET", "/console/login", None, None).await;
    assert_eq!(page.status, 200, "{page:?}");
    let token = page.cookie("console_login").expect("login cookie");
    let answer = request(
        addr,
        "POST",
        "/console/login",
        Some(&format!("console_login={token}")),
        Some(&format!(
            "login={}&password={}&csrf={token}",
            encode(login),
            encode(password)
        )),
    )
    .await;
    assert_eq!(answer.status, 303, "login: {answer:?}");
    let session = answer.cookie("console_session").expect("session cookie");
    format!("console_session={session}")
}
