//! The console used as a person uses it: a real Chromium, driven over WebDriver (Debian's
//! `chromium-driver`), searches by a context value, opens the change and reads its diff,
//! follows the record's timeline and everything the request did, plans a revert that
//! conflicts, is refused applying it over the conflict, and applies it once the row is as the
//! request left it. No injected script runs on any page.

use std::path::{Path, PathBuf};

use bemi_test_harness::{test_database, wait_until_async};
use bemi_worker::console::ConsoleConfig;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use crate::console::{CHROMIUM_FLAGS, chromium, order_status, program, serve, trail};
use crate::support::TIMEOUT;

/// A WebDriver session on a chromedriver of its own (stopped when dropped).
struct Browser {
    client: Client,
    _driver: tokio::process::Child,
}

impl Browser {
    async fn start(profile: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new(program(&["chromedriver"]))
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        wait_until_async("chromedriver to listen", TIMEOUT, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        })
        .await;
        let mut capabilities = serde_json::Map::new();
        let mut args: Vec<String> = CHROMIUM_FLAGS
            .iter()
            .map(|flag| (*flag).to_owned())
            .collect();
        args.push("--window-size=1280,900".to_owned());
        args.push(format!("--user-data-dir={}", profile.display()));
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({ "binary": chromium(), "args": args }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap();
        Self {
            client,
            _driver: driver,
        }
    }

    /// The page's title, checked to be the console's own (an injected script would set it).
    async fn title(&self) -> String {
        let title = self.client.title().await.unwrap();
        assert!(title.ends_with(" · bemi console"), "{title}");
        assert!(!title.contains("pwned"), "an injected script ran: {title}");
        title
    }

    /// Waits until the page is the one titled `title` (a click that navigates returns before
    /// the next page is there).
    async fn wait_title(&self, title: &str) {
        let expected = format!("{title} · bemi console");
        wait_until_async(format!("the page {title:?}"), TIMEOUT, || async {
            let now = self.client.title().await.ok()?;
            (now == expected).then_some(())
        })
        .await;
    }

    /// Waits until the browser is at a URL containing `part`.
    async fn wait_url(&self, part: &str) {
        wait_until_async(format!("a URL with {part:?}"), TIMEOUT, || async {
            let url = self.client.current_url().await.ok()?;
            url.as_str().contains(part).then_some(())
        })
        .await;
    }

    /// The text of the page's main part once it contains `needle` (a click that navigates
    /// returns before the next page is there: until then the old page, or none, is read).
    async fn text_with(&self, needle: &str) -> String {
        let found = wait_until_async(format!("a page showing {needle:?}"), TIMEOUT, || async {
            let main = self.client.find(Locator::Css("main")).await.ok()?;
            let text = main.text().await.ok()?;
            text.contains(needle).then_some(text)
        })
        .await;
        self.title().await;
        found
    }

    async fn click(&self, locator: Locator<'_>) {
        self.client
            .find(locator)
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }

    async fn type_into(&self, name: &str, text: &str) {
        self.client
            .find(Locator::Css(&format!("input[name={name}]")))
            .await
            .unwrap()
            .send_keys(text)
            .await
            .unwrap();
    }

    /// Saves the page as `console-{name}.png` in `shots`.
    async fn screenshot(&self, shots: &Path, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{name}");
        std::fs::write(shots.join(format!("console-{name}.png")), png).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_finds_a_change_follows_it_and_reverts_the_request() {
    let fixture = trail(test_database!()).await;
    let port = serve(ConsoleConfig {
        destination: fixture.source.clone(),
        changes_table: fixture.setup.options().changes_table_name().clone(),
        token: None,
        user_header: None,
        source: Some(fixture.source.clone()),
        slot: fixture.setup.options().slot_name().to_owned(),
        allow_revert: true,
    })
    .await;
    let profile = tempfile::tempdir().unwrap();
    let shots = std::env::var_os("BEMI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile.path().join("screenshots"));
    std::fs::create_dir_all(&shots).unwrap();
    let browser = Browser::start(&profile.path().join("chromium")).await;

    // Search by the request's id.
    browser
        .client
        .goto(&format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap();
    assert_eq!(browser.title().await, "Changes · bemi console");
    browser.type_into("context_key", "request_id").await;
    browser.type_into("context_value", "req-2").await;
    browser
        .click(Locator::Css("form.search button[type=submit]"))
        .await;
    browser.wait_url("context_value=req-2").await;
    let found = browser.text_with("req-2").await;
    assert!(
        found.contains("req-2") && !found.contains("req-1"),
        "{found}"
    );

    // Open the change: its diff shows the status it changed.
    browser.click(Locator::LinkText("Open")).await;
    browser.wait_title("UPDATE public.orders").await;
    assert_eq!(browser.title().await, "UPDATE public.orders · bemi console");
    let changed = browser
        .client
        .find(Locator::Css("table.diff tr.changed"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        changed.contains("status")
            && changed.contains("\"open\"")
            && changed.contains("\"shipped\""),
        "{changed}"
    );

    // The record's timeline: its creation (with the hostile values as text), then the update.
    browser.click(Locator::Css("dd.value a")).await;
    assert_eq!(browser.title().await, "Record 1 · bemi console");
    browser.wait_title("Record 1").await;
    let timeline = browser.text_with("req-1").await;
    let created = timeline.find("req-1").unwrap();
    let updated = timeline.find("req-2").unwrap();
    assert!(created < updated, "{timeline}");
    assert!(timeline.contains("<script>"), "shown as text: {timeline}");

    // Back on the change, everything its request did.
    browser.client.back().await.unwrap();
    browser.wait_title("UPDATE public.orders").await;
    let links = browser
        .client
        .find_all(Locator::LinkText("everything done with it"))
        .await
        .unwrap();
    let mut request_link = None;
    for link in links {
        let href = link.attr("href").await.unwrap().unwrap_or_default();
        if href.contains("context_key=request_id") {
            request_link = Some(link);
        }
    }
    request_link.unwrap().click().await.unwrap();
    assert_eq!(
        browser.title().await,
        "request_id: \"req-2\" · bemi console"
    );
    browser.text_with("1 changes in 1 tables").await;

    // Someone changed the order since: the plan shows the conflict, expected against found.
    fixture
        .sql("UPDATE orders SET status = 'cancelled' WHERE id = 1")
        .await;
    browser
        .click(Locator::LinkText("Plan a revert of all of these"))
        .await;
    browser.title().await;
    let plan_url = browser.client.current_url().await.unwrap();
    let plan = browser.text_with("newest change first").await;
    assert!(plan.contains("1 conflict"), "{plan}");
    assert!(
        plan.contains("\"shipped\"") && plan.contains("\"cancelled\""),
        "{plan}"
    );
    browser.screenshot(&shots, "revert-plan").await;

    // Confirmed, not forced: refused over the conflict, nothing changed.
    browser.click(Locator::Css("input[name=confirm]")).await;
    browser.click(Locator::Css("form.apply button")).await;
    let refused = browser.text_with("Nothing was changed").await;
    assert!(refused.contains("Nothing was changed"), "{refused}");
    assert_eq!(order_status(&fixture).await, "cancelled");

    // The row as the request left it again: the plan is clean and the revert applies.
    fixture
        .sql("UPDATE orders SET status = 'shipped' WHERE id = 1")
        .await;
    browser.client.goto(plan_url.as_str()).await.unwrap();
    browser.text_with("none conflicts").await;
    browser.click(Locator::Css("input[name=confirm]")).await;
    browser.click(Locator::Css("form.apply button")).await;
    let done = browser.text_with("Reverted").await;
    assert!(done.starts_with("Reverted"), "{done}");
    browser.screenshot(&shots, "revert-done").await;
    assert_eq!(order_status(&fixture).await, "open");
    browser.client.close().await.unwrap();
}
