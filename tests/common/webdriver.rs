//! A headless Chromium driven through ChromeDriver (W3C WebDriver over HTTP), for the web UI's
//! tests. The protocol is a handful of JSON calls; they are made with the tests' reqwest
//! rather than a WebDriver crate (fantoccini brings the `webdriver` crate and with it a second
//! ICU stack and http 0.2 into the test build, for the ten calls used here).
//!
//! Debian's `chromium` and `chromium-driver` (installed by `scripts/deps.sh`); the browser runs
//! as root, so with `--no-sandbox`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The W3C name of an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
    _profile: std::path::PathBuf,
}

#[derive(Clone, Debug)]
pub struct Element(pub String);

impl Browser {
    /// Starts ChromeDriver on a free port and a headless Chromium session (`width` x `height`).
    pub async fn start(width: u32, height: u32) -> Browser {
        let port = super::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; scripts/deps.sh installs it)");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    if v["value"]["ready"] == true {
                        break;
                    }
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = super::temp_dir("chromium-profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--metrics-recording-only",
                    "--hide-scrollbars", "--force-device-scale-factor=1",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.display())],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let r = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("chromedriver answers");
        let v: Value = r.json().await.unwrap();
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {v}"))
            .to_string();
        Browser {
            driver,
            base: format!("{base}/session/{id}"),
            http,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(b) = body {
            req = req.json(&b);
        } else if method == reqwest::Method::POST {
            req = req.json(&json!({}));
        }
        let r = req.send().await.expect("chromedriver answers");
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status} {v}"
        );
        v["value"].clone()
    }

    async fn try_call(&self, method: reqwest::Method, path: &str, body: Value) -> Option<Value> {
        let url = format!("{}{path}", self.base);
        let r = self
            .http
            .request(method, &url)
            .json(&body)
            .send()
            .await
            .ok()?;
        let ok = r.status().is_success();
        let v: Value = r.json().await.ok()?;
        ok.then(|| v["value"].clone())
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    pub async fn set_size(&self, width: u32, height: u32) {
        self.call(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and answers its value.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    async fn find_once(&self, using: &str, value: &str) -> Option<Element> {
        let v = self
            .try_call(
                reqwest::Method::POST,
                "/element",
                json!({"using": using, "value": value}),
            )
            .await?;
        v[ELEMENT].as_str().map(|s| Element(s.to_string()))
    }

    /// The first element matching the XPath, waiting up to 10 s for it to appear.
    pub async fn xpath(&self, xpath: &str) -> Element {
        self.wait_element("xpath", xpath).await
    }

    /// The first element matching the CSS selector, waiting up to 10 s for it to appear.
    pub async fn css(&self, selector: &str) -> Element {
        self.wait_element("css selector", selector).await
    }

    async fn wait_element(&self, using: &str, value: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(e) = self.find_once(using, value).await {
                return e;
            }
            if Instant::now() > deadline {
                let body = self.execute("return document.body.innerText", vec![]).await;
                panic!("no element {using} {value:?} on the page; it shows:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether an element matches the CSS selector now.
    pub async fn exists(&self, selector: &str) -> bool {
        self.find_once("css selector", selector).await.is_some()
    }

    /// The control a `<label>` with exactly this text names.
    pub async fn labelled(&self, label: &str) -> Element {
        let l = self
            .xpath(&format!("//label[normalize-space(.)='{label}']"))
            .await;
        let id = self.property(&l, "htmlFor").await;
        let id = id.as_str().unwrap_or_default().to_string();
        assert!(!id.is_empty(), "label {label:?} names no control");
        self.css(&format!("#{id}")).await
    }

    /// The button whose text (or aria-label) is exactly `name`.
    pub async fn button(&self, name: &str) -> Element {
        self.xpath(&format!(
            "//button[(normalize-space(.)='{name}' or @aria-label='{name}') and not(ancestor::*[@hidden])]"
        ))
        .await
    }

    pub async fn link(&self, text: &str) -> Element {
        self.xpath(&format!("//a[normalize-space(.)='{text}']"))
            .await
    }

    pub async fn click(&self, e: &Element) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/click", e.0),
            None,
        )
        .await;
    }

    pub async fn type_text(&self, e: &Element, text: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/value", e.0),
            Some(json!({"text": text})),
        )
        .await;
    }

    pub async fn clear(&self, e: &Element) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{}/clear", e.0),
            None,
        )
        .await;
    }

    pub async fn text(&self, e: &Element) -> String {
        self.call(
            reqwest::Method::GET,
            &format!("/element/{}/text", e.0),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    pub async fn property(&self, e: &Element, name: &str) -> Value {
        self.call(
            reqwest::Method::GET,
            &format!("/element/{}/property/{name}", e.0),
            None,
        )
        .await
    }

    /// The accessible name Chromium computes for the element.
    pub async fn accessible_name(&self, e: &Element) -> String {
        self.call(
            reqwest::Method::GET,
            &format!("/element/{}/computedlabel", e.0),
            None,
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// The page's visible text.
    pub async fn page_text(&self) -> String {
        self.execute("return document.body.innerText", vec![])
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits up to `limit` for the page's text to contain `needle`.
    pub async fn wait_text(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let t = self.page_text().await;
            if t.contains(needle) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {needle:?}; it shows:\n{t}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine;
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or_default())
            .expect("base64 PNG")
    }

    /// The browser's console since the last call (ChromeDriver's log; reading clears it):
    /// `(level, message)`.
    pub async fn console(&self) -> Vec<(String, String)> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({"type": "browser"})),
            )
            .await;
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["level"].as_str().unwrap_or_default().to_string(),
                            e["message"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn quit(mut self) {
        let _ = self.http.delete(&self.base).send().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // A test that failed never quit the session: its browser outlives the driver.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(self._profile.display().to_string())
            .status();
    }
}
