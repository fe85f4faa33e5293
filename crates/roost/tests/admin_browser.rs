//! The admin UI in a real headless Chromium (Debian chromium + chromedriver, over WebDriver): an
//! attack replayed through the real pipeline (`roost tail` → broker → `roost score` → Redis),
//! then an operator signs in, finds the attacker, reads its reasons and timeline, blocks another
//! address with a comment, finds that in the audit log, and the proxy (`roost proxy`) refuses
//! the blocked address. The attacker's user agent `<script>alert(1)</script>` renders as text.
//! Screenshots of the overview and the client page go to target/screenshots/ (docs/ holds the
//! committed ones).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;
use fantoccini::{ClientBuilder, Locator};

/// A GET through the proxy as `client` (the proxy trusts 127.0.0.1's X-Forwarded-For).
fn via_proxy(port: u16, client: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /healthz HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: {client}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_investigates_and_blocks_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (admin_port, score_port, tail_port, proxy_port, proxy_metrics, driver_port, prom_port, bgp_port) =
        (free_port(), free_port(), free_port(), free_port(), free_port(), free_port(), free_port(), free_port());
    let prefix = format!("{}:", unique("ui"));
    let topics = unique("ui");
    let log = d.join("access.log");
    std::fs::write(&log, "").unwrap();
    std::fs::write(
        d.join("users.toml"),
        format!(
            "[[user]]\nname = \"ana\"\nrole = \"operator\"\npassword_hash = \"{}\"\n",
            hash_password("correct horse battery")
        ),
    )
    .unwrap();
    let cfg = d.join("roost.toml");
    std::fs::write(
        &cfg,
        format!(
            "[kafka]\nbrokers = \"{kafka}\"\n[kafka.topics]\nrequests = \"{topics}-requests\"\ndeadletter = \"{topics}-dead\"\n\
             verdicts = \"{topics}-verdicts\"\noverrides = \"{topics}-overrides\"\naudit = \"{topics}-audit\"\nfeeds = \"{topics}-feeds\"\n\
             [redis]\nurl = \"{redis}\"\nprefix = \"{prefix}\"\n\
             [tail]\ncheckpoint = \"{d}/tail.json\"\nstart = \"beginning\"\npoll_interval = \"50ms\"\nlisten = \"127.0.0.1:{tail_port}\"\n\
             [score]\ngroup = \"{topics}-group\"\npartitions = 1\nlisten = \"127.0.0.1:{score_port}\"\n\
             [geo]\ncity_db = \"{mmdb}/GeoIP2-City-Test.mmdb\"\nasn_db = \"{mmdb}/GeoLite2-ASN-Test.mmdb\"\n\
             [admin]\nlisten = \"127.0.0.1:{admin_port}\"\nusers_file = \"{d}/users.toml\"\ncookie_secure = false\nprometheus_url = \"http://127.0.0.1:{prom_port}\"\nbgp_url = \"http://127.0.0.1:{bgp_port}\"\n\
             [bgp]\ndry_run = true\nprotect = [\"192.0.2.0/24\"]\nlisten = \"127.0.0.1:{bgp_port}\"\n\
             [proxy]\nlisten = [\"127.0.0.1:{proxy_port}\"]\nupstreams = [\"127.0.0.1:{admin_port}\"]\n\
             metrics_listen = \"127.0.0.1:{proxy_metrics}\"\ntrusted_proxies = [\"127.0.0.1/32\"]\naccess_log = \"{d}/proxy.log\"\n\
             threads = 1\npid_file = \"{d}/proxy.pid\"\nupgrade_sock = \"{d}/upgrade.sock\"\n\
             [[logs]]\npath = \"{}\"\nformat = \"combined\"\n",
            log.display(),
            kafka = kafka(),
            redis = redis(),
            d = d.display(),
            mmdb = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mmdb").display(),
        ),
    )
    .unwrap();
    let _tail = Proc::roost("roost tail", &cfg, "tail");
    let _score = Proc::roost("roost score", &cfg, "score");
    let _admin = Proc::roost("roost admin", &cfg, "admin");
    let _proxy = Proc::roost("roost proxy", &cfg, "proxy");
    let _bgp = Proc::roost("roost bgp", &cfg, "bgp");
    // a real Prometheus scraping the scorer and the proxy, for the overview
    let _prom = common::prometheus(
        d,
        prom_port,
        &format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: roost-score\n    static_configs: [{{ targets: ['127.0.0.1:{score_port}'] }}]\n\
             \x20 - job_name: roost-proxy\n    static_configs: [{{ targets: ['127.0.0.1:{proxy_metrics}'] }}]\n"
        ),
    );
    let mut cd = Command::new("/usr/bin/chromedriver");
    cd.arg(format!("--port={driver_port}"));
    let _driver = Proc::spawn("chromedriver", cd);
    wait_for(Duration::from_secs(30), "roost admin, the proxy and chromedriver", || {
        http_get(admin_port, "/healthz").is_some()
            && metric(proxy_metrics, "roost_proxy_redis_up") == Some(1.0)
            && TcpStream::connect(("127.0.0.1", driver_port)).is_ok()
    });

    // the attack: a scanner whose user agent is a script, and a reader
    let xss = "<script>alert(1)</script>";
    let mut lines = String::new();
    for p in
        ["/.env", "/.git/config", "/phpmyadmin/", "/backup.sql", "/admin.php", "/server-status", "/wp-config.php.bak"]
    {
        lines.push_str(&clf_line("203.0.113.7", "GET", p, 404, xss, unix_now()));
        lines.push_str(&clf_line("198.51.100.20", "GET", "/articles/1", 200, "Mozilla/5.0", unix_now()));
        // two more scanners from places MaxMind's test databases know (London; Telstra's network)
        lines.push_str(&clf_line("81.2.69.142", "GET", p, 404, "python-requests/2.31", unix_now()));
        lines.push_str(&clf_line("1.128.0.1", "GET", p, 404, "Go-http-client/1.1", unix_now()));
    }
    std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(lines.as_bytes()).unwrap();
    let mut store = roost_verdicts::Store::new(&roost_verdicts::RedisConfig {
        url: redis(),
        prefix: prefix.clone(),
        ..Default::default()
    })
    .unwrap();
    wait_for(Duration::from_secs(60), "the scanner's verdict in Redis", || {
        store.load_all().is_ok_and(|all| all.get("203.0.113.7").is_some_and(|v| v.verdict.as_str() == "bad"))
    });
    wait_for(Duration::from_secs(20), "an unknown client to pass the proxy", || {
        via_proxy(proxy_port, "198.51.100.30") == 200
    });
    // a few samples of the population's mean in Prometheus
    let q = "/api/v1/query?query=count_over_time((sum(roost_reputation_sum%7Bby%3D%22request%22%7D)%2Fsum(roost_reputation_weight%7Bby%3D%22request%22%7D))%5B1m%3A1s%5D)";
    wait_for(Duration::from_secs(60), "the mean reputation in Prometheus", || {
        http_get(prom_port, q).and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok()).is_some_and(|v| {
            v["data"]["result"][0]["value"][1].as_str().and_then(|n| n.parse::<f64>().ok()).unwrap_or(0.0) >= 25.0
        })
    });

    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--window-size=1280,1500", format!("--user-data-dir={}/chrome", d.display())]
        }),
    );
    let c = ClientBuilder::native()
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("a Chromium session");
    let base = format!("http://127.0.0.1:{admin_port}");
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    // sign in
    c.goto(&format!("{base}/")).await.unwrap();
    assert!(c.current_url().await.unwrap().as_str().ends_with("/login"));
    c.find(Locator::Css("input[name=name]")).await.unwrap().send_keys("ana").await.unwrap();
    c.find(Locator::Css("input[name=password]")).await.unwrap().send_keys("correct horse battery").await.unwrap();
    c.find(Locator::Css("form[action='/login'] button")).await.unwrap().click().await.unwrap();
    c.wait().for_element(Locator::Css("h1")).await.unwrap();
    let h1 = c.find(Locator::Css("h1")).await.unwrap().text().await.unwrap();
    assert_eq!(h1, "Overview");
    assert!(c.find(Locator::Css("svg polyline.mean")).await.is_ok(), "the average reputation is charted");
    let body = c.find(Locator::Css("body")).await.unwrap().text().await.unwrap();
    assert!(body.contains("roost-score") && body.contains("roost-proxy"), "pipeline health: {body}");
    assert!(body.contains("Drop alert"), "{body}");
    std::fs::write(shots.join("admin-overview.png"), c.screenshot().await.unwrap()).unwrap();

    // search the attacker and open it
    c.find(Locator::Css("input[name=q]")).await.unwrap().send_keys("203.0.113.7").await.unwrap();
    c.find(Locator::Css("form[action='/clients'] button")).await.unwrap().click().await.unwrap();
    c.wait().for_element(Locator::Css("p")).await.unwrap();
    let link = match c.find(Locator::LinkText("203.0.113.7")).await {
        Ok(l) => l,
        Err(e) => panic!("{e}: {} at {}", c.source().await.unwrap(), c.current_url().await.unwrap()),
    };
    link.click().await.unwrap();
    c.wait().for_element(Locator::Css("ul.reasons")).await.unwrap();
    let reasons = c.find(Locator::Css("ul.reasons")).await.unwrap().text().await.unwrap();
    assert!(reasons.contains("404"), "{reasons}");
    assert!(c.find(Locator::Css("svg polyline")).await.is_ok(), "the reputation chart is drawn");
    let routers = c.find(Locator::XPath("//p[starts-with(., 'Routers:')]")).await.unwrap().text().await.unwrap();
    assert!(routers.contains("diverted: flowspec rule for 203.0.113.7/32"), "{routers}");
    // the user agent is text on the page, not a script in it
    let body = c.find(Locator::Css("body")).await.unwrap().text().await.unwrap();
    assert!(body.contains(xss), "the user agent shows as text: {body}");
    let scripts: serde_json::Value =
        c.execute("return document.getElementsByTagName('script').length", vec![]).await.unwrap();
    assert_eq!(scripts, serde_json::json!(0), "no script element made it into the page");
    std::fs::write(shots.join("admin-client.png"), c.screenshot().await.unwrap()).unwrap();

    // block another address, with a comment
    c.goto(&format!("{base}/clients/203.0.113.50")).await.unwrap();
    c.wait()
        .for_element(Locator::Css("input[name=comment]"))
        .await
        .unwrap()
        .send_keys("credential stuffing from the shop's own logs")
        .await
        .unwrap();
    c.find(Locator::Css("form[action='/overrides'] button")).await.unwrap().click().await.unwrap();
    if let Err(e) = c.wait().for_element(Locator::Css("p.ok")).await {
        panic!("{e}: {} at {}", c.source().await.unwrap(), c.current_url().await.unwrap());
    }

    // the audit log says so
    c.goto(&format!("{base}/audit")).await.unwrap();
    let audit = c.wait().for_element(Locator::Css("table")).await.unwrap().text().await.unwrap();
    assert!(
        audit.contains("203.0.113.50/32") && audit.contains("credential stuffing") && audit.contains("ana"),
        "{audit}"
    );

    // and the proxy refuses it
    wait_for(Duration::from_secs(20), "the proxy to refuse the blocked address", || {
        via_proxy(proxy_port, "203.0.113.50") == 403
    });
    assert_eq!(via_proxy(proxy_port, "198.51.100.30"), 200);
    c.close().await.unwrap();
}
