//! `roost bgp` against a real router on loopback: GoBGP (gobgpd, Debian) peering passively on
//! 127.0.0.1, roost connecting from 127.0.0.4. Verdicts are written to a real broker's verdicts
//! topic (scripts/services.sh); the rules must show up in gobgpd's flowspec tables, go away when
//! verdicts expire, come back after the router restarts, and never cover an allowlisted or
//! too-broad prefix.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// A verdicts topic of this test's own on the shared broker.
fn verdicts_topic(name: &str) -> (roost_kafka::KafkaConfig, String) {
    let topic = unique(name);
    let kafka = roost_kafka::KafkaConfig {
        brokers: kafka(),
        topics: roost_kafka::Topics { verdicts: topic.clone(), ..Default::default() },
        ..Default::default()
    };
    roost_kafka::ensure_topic(&kafka, &topic, 1, true).unwrap();
    (kafka, topic)
}

/// `roost bgp` (AS 65003, 127.0.0.4) following `topic`, peering with the gobgpd of `gobgpd()` on
/// `bgp_port`; `extra` lines go into `[bgp]`.
fn controller_config(
    dir: &Path,
    kafka: &roost_kafka::KafkaConfig,
    topic: &str,
    listen: u16,
    bgp_port: u16,
    extra: &str,
) -> std::path::PathBuf {
    let cfg = dir.join("roost.toml");
    std::fs::write(
        &cfg,
        format!(
            "[kafka]\nbrokers = \"{}\"\n[kafka.topics]\nverdicts = \"{topic}\"\n[bgp]\nasn = 65003\nrouter_id = \"127.0.0.4\"\n\
             hold_time = 9\nlisten = \"127.0.0.1:{listen}\"\n\
             peers = [{{ address = \"127.0.0.1:{bgp_port}\", local_address = \"127.0.0.4\", peer_as = 65000 }}]\n{extra}\n",
            kafka.brokers
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn rules_reach_gobgp_expire_come_back_after_a_restart_and_never_cover_the_allowlist() {
    let dir = tempfile::tempdir().unwrap();
    let (bgp_port, api_port, listen) = (free_port(), free_port(), free_port());
    let (kafka, topic) = verdicts_topic("verdicts");
    let cfg = controller_config(
        dir.path(),
        &kafka,
        &topic,
        listen,
        bgp_port,
        r#"protect = ["192.0.2.0/24", "2001:db8:ffff::/48"]
allowlist = ["198.51.100.0/24"]
bad = { kind = "discard" }"#,
    );
    let mut router = gobgpd(dir.path(), bgp_port, api_port);
    let _bgp = Proc::roost("bgp", &cfg, "bgp");
    wait_for(Duration::from_secs(30), "the session", || metric(listen, "roost_bgp_session_up") == Some(1.0));

    send_verdicts(
        &kafka,
        &[
            ("203.0.113.9", "bad", -0.9, 3_600_000),
            ("203.0.113.10", "dubious", -0.3, 12_000),
            ("2001:db8:1:2::/64", "bad", -0.8, 3_600_000),
            ("198.51.100.7", "bad", -1.0, 3_600_000),
            ("10.9.0.0/16", "bad", -1.0, 3_600_000),
        ],
    );
    wait_for(Duration::from_secs(15), "the IPv4 rules in gobgpd", || {
        let r = rib(api_port, "ipv4-flowspec");
        r.contains("[source: 203.0.113.9/32]") && r.contains("[source: 203.0.113.10/32]")
    });
    let v4 = rib(api_port, "ipv4-flowspec");
    eprintln!("{v4}");
    let bad_line = v4.lines().find(|l| l.contains("203.0.113.9/32")).unwrap();
    assert!(bad_line.contains("[destination: 192.0.2.0/24]"), "{bad_line}");
    assert!(bad_line.contains("[protocol: ==tcp]") || bad_line.contains("protocol"), "{bad_line}");
    assert!(bad_line.contains("discard"), "{bad_line}");
    let dubious_line = v4.lines().find(|l| l.contains("203.0.113.10/32")).unwrap();
    assert!(dubious_line.contains("redirect"), "{dubious_line}");
    wait_for(Duration::from_secs(10), "the IPv6 rule", || rib(api_port, "ipv6-flowspec").contains("2001:db8:1:2::/64"));
    assert!(!v4.contains("198.51.100"), "an allowlisted prefix was announced");
    assert!(!v4.contains("10.9.0.0"), "a prefix shorter than /24 was announced");

    // the dubious verdict expires after 12 s (long enough to be seen first on a slow machine):
    // withdrawn; the others stay
    wait_for(Duration::from_secs(30), "the expired rule to be withdrawn", || {
        !rib(api_port, "ipv4-flowspec").contains("203.0.113.10/32")
    });
    assert!(rib(api_port, "ipv4-flowspec").contains("203.0.113.9/32"));

    // the router restarts: the session comes back with every rule
    router.sigkill();
    router = gobgpd(dir.path(), bgp_port, api_port);
    wait_for(Duration::from_secs(60), "the rules after the router restarted", || {
        rib(api_port, "ipv4-flowspec").contains("203.0.113.9/32")
            && rib(api_port, "ipv6-flowspec").contains("2001:db8:1:2::/64")
    });
    // a verdict that turns good withdraws its rule
    send_verdicts(&kafka, &[("203.0.113.9", "good", 0.5, 0)]);
    wait_for(Duration::from_secs(15), "the good verdict's rule to go", || {
        !rib(api_port, "ipv4-flowspec").contains("203.0.113.9/32")
    });
    let show =
        Command::new(env!("CARGO_BIN_EXE_roost")).arg("--config").arg(&cfg).args(["bgp", "show"]).output().unwrap();
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(show.contains("2001:db8:1:2::/64") && show.contains("R-5001 brute-force login"), "{show}");
    assert!(show.contains("refused 198.51.100.7: allowlisted"), "{show}");
    assert!(metric(listen, "roost_bgp_withdraws_total").unwrap() >= 2.0);
    drop(router);
}

fn bird(dir: &Path, bgp_port: u16) -> (Proc, std::path::PathBuf) {
    let conf = dir.join("bird.conf");
    let ctl = dir.join("bird.ctl");
    std::fs::write(
        &conf,
        format!(
            r#"log stderr {{ warning, error, fatal, bug }};
router id 127.0.0.1;
flow4 table flowtab4;
flow6 table flowtab6;
protocol device {{ }}
protocol bgp roost {{
  local 127.0.0.1 port {bgp_port} as 65000;
  neighbor 127.0.0.4 as 65003;
  multihop; passive on; strict bind on; hold time 9;
  error wait time 1, 5; error forget time 10;
  flow4 {{ table flowtab4; import all; export none; }};
  flow6 {{ table flowtab6; import all; export none; next hop address ::1; }};
}}
"#
        ),
    )
    .unwrap();
    let mut c = Command::new("/usr/sbin/bird");
    c.arg("-f").arg("-c").arg(&conf).arg("-s").arg(&ctl).arg("-P").arg(dir.join("bird.pid"));
    let p = Proc::spawn("bird", c);
    wait_for(Duration::from_secs(20), "bird to listen", || TcpStream::connect(("127.0.0.1", bgp_port)).is_ok());
    (p, ctl)
}

/// A `birdc` that keeps failing fails the test (its empty output would pass a "withdrawn" wait).
fn birdc(ctl: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new("/usr/sbin/birdc");
    cmd.arg("-s").arg(ctl).args(args);
    common::output_of(cmd)
}

#[test]
fn rules_reach_bird_with_their_match_and_action() {
    let dir = tempfile::tempdir().unwrap();
    let (bgp_port, listen) = (free_port(), free_port());
    let (kafka, topic) = verdicts_topic("verdicts-bird");
    let cfg = dir.path().join("roost.toml");
    std::fs::write(
        &cfg,
        format!(
            "[kafka]\nbrokers = \"{}\"\n[kafka.topics]\nverdicts = \"{topic}\"\n[bgp]\nhold_time = 9\nlisten = \"127.0.0.1:{listen}\"\n\
             protect = [\"192.0.2.0/24\", \"2001:db8:ffff::/48\"]\n\
             peers = [{{ address = \"127.0.0.1:{bgp_port}\", local_address = \"127.0.0.4\" }}]\n\
             bad = {{ kind = \"rate_limit\", bytes_per_second = 1000.0 }}\n",
            kafka.brokers
        ),
    )
    .unwrap();
    let (_bird, ctl) = bird(dir.path(), bgp_port);
    let _bgp = Proc::roost("bgp", &cfg, "bgp");
    wait_for(Duration::from_secs(30), "the session with BIRD", || {
        birdc(&ctl, &["show", "protocols", "roost"]).contains("Established")
    });
    send_verdicts(
        &kafka,
        &[
            ("203.0.113.21", "bad", -0.9, 3_600_000),
            ("2001:db8:5:6::/64", "bad", -0.9, 3_600_000),
            ("203.0.113.22", "dubious", -0.2, 10_000),
        ],
    );
    wait_for(Duration::from_secs(15), "the rules in BIRD", || {
        birdc(&ctl, &["show", "route", "table", "flowtab4"]).contains("src 203.0.113.22/32")
            && birdc(&ctl, &["show", "route", "table", "flowtab6"]).contains("src 2001:db8:5:6::/64")
    });
    let all = birdc(&ctl, &["show", "route", "table", "flowtab4", "all"]);
    eprintln!("{all}");
    let t = birdc(&ctl, &["show", "route", "table", "flowtab4"]);
    let line = t.lines().find(|l| l.contains("src 203.0.113.21/32")).unwrap();
    assert!(line.contains("dst 192.0.2.0/24") && line.contains("proto 6") && line.contains("dport 80,443"), "{line}");
    // traffic-rate 1000 bytes/s; the dubious one redirects to VRF 65003:100
    assert!(all.contains("(generic, 0x80060000, 0x447a0000)"), "{all}");
    assert!(all.contains("(generic, 0x8008fdeb, 0x64)"), "{all}");
    wait_for(Duration::from_secs(30), "the expired rule to leave BIRD", || {
        !birdc(&ctl, &["show", "route", "table", "flowtab4"]).contains("src 203.0.113.22/32")
    });

    // `reload in` makes BIRD (keeping no copy of what it received) ask with ROUTE-REFRESH:
    // roost answers with every rule, on the same session
    let resets = metric(listen, "roost_bgp_session_resets_total");
    let out = birdc(&ctl, &["reload", "in", "roost"]);
    assert!(out.contains("reload"), "{out}");
    wait_for(Duration::from_secs(10), "the refresh to be answered", || {
        metric(listen, "roost_bgp_route_refreshes_total").unwrap_or(0.0) >= 1.0
    });
    wait_for(Duration::from_secs(10), "the rules after the refresh", || {
        birdc(&ctl, &["show", "route", "table", "flowtab4"]).contains("src 203.0.113.21/32")
            && birdc(&ctl, &["show", "route", "table", "flowtab6"]).contains("src 2001:db8:5:6::/64")
    });
    assert_eq!(metric(listen, "roost_bgp_session_resets_total"), resets, "a refresh is not a reset");
}

#[test]
fn a_router_that_connects_to_roost_gets_the_rules_too() {
    let dir = tempfile::tempdir().unwrap();
    let (roost_port, api_port, listen) = (free_port(), free_port(), free_port());
    let (kafka, topic) = verdicts_topic("verdicts-passive");
    let conf = dir.path().join("gobgpd.toml");
    std::fs::write(
        &conf,
        format!(
            r#"[global.config]
  as = 65000
  router-id = "127.0.0.1"
  port = -1
[[neighbors]]
  [neighbors.config]
    neighbor-address = "127.0.0.4"
    peer-as = 65003
  [neighbors.transport.config]
    local-address = "127.0.0.1"
    remote-port = {roost_port}
  [neighbors.ebgp-multihop.config]
    enabled = true
    multihop-ttl = 2
  [neighbors.timers.config]
    connect-retry = 1
    hold-time = 9
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-flowspec"
"#
        ),
    )
    .unwrap();
    let cfg = dir.path().join("roost.toml");
    std::fs::write(
        &cfg,
        format!(
            "[kafka]\nbrokers = \"{}\"\n[kafka.topics]\nverdicts = \"{topic}\"\n[bgp]\nhold_time = 9\nlisten = \"127.0.0.1:{listen}\"\n\
             bgp_listen = \"127.0.0.4:{roost_port}\"\n\
             peers = [{{ address = \"127.0.0.1:179\", passive = true, peer_as = 65000 }}]\n\
             protect = [\"192.0.2.0/24\"]\n",
            kafka.brokers
        ),
    )
    .unwrap();
    let _bgp = Proc::roost("bgp", &cfg, "bgp");
    // (not probed by connecting: a connection from 127.0.0.1 is the router's to roost)
    wait_for(Duration::from_secs(20), "roost bgp to start", || metric(listen, "roost_bgp_session_up") == Some(0.0));
    let _router = gobgpd_with(&conf, api_port);
    wait_for(Duration::from_secs(40), "the session the router opened", || {
        metric(listen, "roost_bgp_session_up") == Some(1.0)
    });
    send_verdicts(&kafka, &[("203.0.113.31", "bad", -0.9, 3_600_000)]);
    wait_for(Duration::from_secs(15), "the rule in gobgpd", || {
        rib(api_port, "ipv4-flowspec").contains("[source: 203.0.113.31/32]")
    });
}

/// A router that falls silent (SIGSTOP) is dropped when the hold timer runs out, and when it
/// wakes the session comes back with the rules.
#[test]
fn a_silent_router_is_dropped_by_the_hold_timer_and_gets_the_rules_back() {
    let dir = tempfile::tempdir().unwrap();
    let (bgp_port, api_port, listen) = (free_port(), free_port(), free_port());
    let (kafka, topic) = verdicts_topic("verdicts-rr");
    let cfg = controller_config(dir.path(), &kafka, &topic, listen, bgp_port, r#"protect = ["192.0.2.0/24"]"#);
    let router = gobgpd(dir.path(), bgp_port, api_port);
    let _bgp = Proc::roost("bgp", &cfg, "bgp");
    wait_for(Duration::from_secs(30), "the session", || metric(listen, "roost_bgp_session_up") == Some(1.0));
    send_verdicts(&kafka, &[("203.0.113.44", "bad", -0.9, 3_600_000)]);
    wait_for(Duration::from_secs(15), "the rule in gobgpd", || {
        rib(api_port, "ipv4-flowspec").contains("203.0.113.44/32")
    });

    let resets = metric(listen, "roost_bgp_session_resets_total");

    // the router stops answering: after the 9 s hold time roost closes the session
    let pid = router.pid().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    wait_for(Duration::from_secs(30), "the hold timer to expire", || {
        metric(listen, "roost_bgp_session_up") == Some(0.0)
    });
    assert!(metric(listen, "roost_bgp_session_resets_total") > resets);
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    wait_for(Duration::from_secs(60), "the session and the rule to come back", || {
        metric(listen, "roost_bgp_session_up") == Some(1.0)
            && rib(api_port, "ipv4-flowspec").contains("203.0.113.44/32")
    });
    drop(router);
}

/// Under `roost up` the controller runs in process, its verdicts straight from the engine: a
/// scanner in the access log becomes a flowspec rule in gobgpd without Kafka or Redis.
#[test]
fn roost_up_diverts_a_scanner_from_its_own_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (bgp_port, api_port, listen, up_port) = (free_port(), free_port(), free_port(), free_port());
    let log = dir.path().join("access.log");
    std::fs::write(&log, "").unwrap();
    let cfg = dir.path().join("roost.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[[logs]]
path = "{}"
format = "combined"
[up]
listen = "127.0.0.1:{up_port}"
poll_interval = "100ms"
proxy = false
admin = false
[bgp]
asn = 65003
router_id = "127.0.0.4"
hold_time = 9
listen = "127.0.0.1:{listen}"
protect = ["192.0.2.0/24"]
peers = [{{ address = "127.0.0.1:{bgp_port}", local_address = "127.0.0.4", peer_as = 65000 }}]
"#,
            log.display()
        ),
    )
    .unwrap();
    let router = gobgpd(dir.path(), bgp_port, api_port);
    let _up = Proc::roost("roost up", &cfg, "up");
    wait_for(Duration::from_secs(30), "the session", || metric(listen, "roost_bgp_session_up") == Some(1.0));
    let mut lines = String::new();
    for path in
        ["/.env", "/.git/config", "/phpmyadmin/", "/backup.sql", "/admin.php", "/server-status", "/wp-config.php.bak"]
    {
        lines.push_str(&clf_line("203.0.113.77", "GET", path, 404, "scanner", unix_now()));
    }
    std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(lines.as_bytes()).unwrap();
    wait_for(Duration::from_secs(20), "the scanner's rule in gobgpd", || {
        rib(api_port, "ipv4-flowspec").contains("[source: 203.0.113.77/32]")
    });
    let show = http_get(listen, "/rules").unwrap();
    assert!(show.contains("203.0.113.77/32") && show.contains("404"), "{show}");
    drop(router);
}
