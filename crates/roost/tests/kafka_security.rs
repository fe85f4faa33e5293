//! roost against a Kafka cluster that wants TLS and SASL, as managed and corporate clusters do.
//!
//! The broker is a real tansu. tansu 0.6 takes `--cert`/`--key` but serves no TLS (its acceptor
//! is built and never used), so TLS is a real TLS endpoint, stunnel, in front of it; the broker
//! advertises the TLS port, so every connection librdkafka makes (bootstrap, partition leaders,
//! the group coordinator) goes through TLS.
//!
//! - Over TLS (`security.protocol = "SSL"`), `roost tail` produces and `roost score` consumes
//!   and reaches replay's verdicts; an unknown CA and a plaintext client are refused, each with
//!   librdkafka's reason in the error.
//! - SASL SCRAM-SHA-512 inside TLS (`SASL_SSL`) against tansu's `--authentication`: the right
//!   password reads a topic, a wrong one is refused with "SASL authentication error". tansu's
//!   SCRAM is too unreliable for a whole pipeline: it answers about a third of librdkafka's
//!   handshakes with `invalid-proof` whatever the password (seen: 6 of 19 with the right one),
//!   and cannot re-authenticate a connection when the session lifetime it grants (60 s) runs
//!   out. So the SASL test asks with fresh clients, a few times, and only for reads.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::*;
use roost_kafka::KafkaConfig;
use roost_verdicts::{RedisConfig, Store};

const USER: &str = "roost";
const PASSWORD: &str = "correct horse battery staple";

/// A tansu behind a TLS endpoint for `localhost`, authenticating with SCRAM-SHA-512 when asked.
struct SecureBroker {
    dir: tempfile::TempDir,
    /// The TLS port (what clients are given).
    port: u16,
    /// tansu's own port, plaintext, behind the TLS endpoint.
    plain_port: u16,
    sasl: bool,
    _tansu: Proc,
    _tls: Proc,
}

impl SecureBroker {
    fn start(sasl: bool) -> SecureBroker {
        let dir = tempfile::tempdir().unwrap();
        let (port, plain_port) = (free_port(), free_port());
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost", "-keyout"])
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(dir.path().join("cert.pem"))
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
        let tansu = if sasl {
            // tansu asks every client to authenticate first, user administration included: the
            // user is made while it runs without authentication, then it restarts with it on
            // the same storage.
            let open = tansu(dir.path(), plain_port, port, false);
            let out = Command::new(common::tansu())
                .args(["user", "create", "--broker", &format!("tcp://127.0.0.1:{plain_port}"), USER, PASSWORD])
                .args(["--mechanism", "scram512"])
                .output()
                .unwrap();
            assert!(out.status.success(), "tansu user create: {}", String::from_utf8_lossy(&out.stderr));
            drop(open);
            tansu(dir.path(), plain_port, port, true)
        } else {
            tansu(dir.path(), plain_port, port, false)
        };
        let conf = dir.path().join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{plain_port}\n\
                 cert = {d}/cert.pem\nkey = {d}/key.pem\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        let mut c = Command::new("stunnel4");
        c.arg(&conf);
        let tls = Proc::spawn("stunnel", c);
        wait_for(Duration::from_secs(20), "the TLS endpoint to listen", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        SecureBroker { dir, port, plain_port, sasl, _tansu: tansu, _tls: tls }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// What a deployment would write: TLS with the CA, and SASL SCRAM-SHA-512 with the password
    /// in a file when the broker authenticates.
    fn config(&self, password: &str) -> KafkaConfig {
        let mut cfg = KafkaConfig { brokers: format!("localhost:{}", self.port), ..Default::default() };
        let mut props = vec![
            ("security.protocol", "SSL".to_owned()),
            ("ssl.ca.location", self.ca().display().to_string()),
            // the TLS endpoint listens on 127.0.0.1 only; `localhost` may resolve to ::1 first
            ("broker.address.family", "v4".to_owned()),
        ];
        if self.sasl {
            let file = self.dir.path().join(format!("password-{}", password.len()));
            std::fs::write(&file, format!("{password}\n")).unwrap();
            cfg.sasl_password_file = file.display().to_string();
            props[0].1 = "SASL_SSL".to_owned();
            props.push(("sasl.mechanism", "SCRAM-SHA-512".to_owned()));
            props.push(("sasl.username", USER.to_owned()));
        }
        cfg.properties = props.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        cfg
    }
}

fn tansu(dir: &Path, port: u16, advertised: u16, authentication: bool) -> Proc {
    let mut c = Command::new(common::tansu());
    c.args(["broker", "--listener-url", &format!("tcp://127.0.0.1:{port}")])
        .args(["--advertised-listener-url", &format!("tcp://localhost:{advertised}")])
        // tansu opens sqlite files relative to its working directory
        .args(["--storage-engine", "sqlite://tansu.db"]);
    if authentication {
        c.arg("--authentication");
    }
    c.current_dir(dir).env("RUST_LOG", "warn");
    let p = Proc::spawn(if authentication { "tansu+auth" } else { "tansu" }, c);
    wait_for(Duration::from_secs(20), "tansu to listen", || TcpStream::connect(("127.0.0.1", port)).is_ok());
    p
}

/// Reading `topic` with `cfg` fails within bounded time, for a reason that names one of `expect`.
fn refused(what: &str, cfg: &KafkaConfig, topic: &str, expect: &[&str]) {
    let start = Instant::now();
    let e = roost_kafka::read_to_end(cfg, topic, Duration::from_secs(15), |_| {})
        .expect_err(&format!("{what}: a client the broker should refuse read a topic"));
    let text = format!("{e}");
    eprintln!("[test] {what}: {text}");
    assert!(expect.iter().any(|x| text.contains(x)), "{what}: the error does not say why: {text}");
    assert!(start.elapsed() < Duration::from_secs(40), "{what}: took {:?}", start.elapsed());
}

/// `cfg` without TLS or SASL: a plaintext client.
fn plaintext(cfg: &KafkaConfig, brokers: String) -> KafkaConfig {
    let mut c = cfg.clone();
    c.brokers = brokers;
    c.properties.retain(|k, _| !k.starts_with("sasl.") && !k.starts_with("ssl.") && k != "security.protocol");
    c.sasl_password_file.clear();
    c
}

/// `[kafka]` as TOML, for the roost processes.
fn kafka_toml(cfg: &KafkaConfig, topics: &[(&str, &str)]) -> String {
    let mut t = format!(
        "[kafka]\nbrokers = \"{}\"\nsasl_password_file = \"{}\"\n[kafka.topics]\n",
        cfg.brokers, cfg.sasl_password_file
    );
    for (k, v) in topics {
        t.push_str(&format!("{k} = \"{v}\"\n"));
    }
    t.push_str("[kafka.properties]\n");
    for (k, v) in &cfg.properties {
        t.push_str(&format!("\"{k}\" = \"{v}\"\n"));
    }
    t
}

/// `roost replay`'s non-good verdicts for `log`, by subject.
fn replay_verdicts(log: &Path) -> BTreeMap<String, String> {
    let out_file = log.with_extension("verdicts.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(["replay", "--format", "combined", "-o"])
        .arg(&out_file)
        .arg(log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut m = BTreeMap::new();
    for l in std::fs::read_to_string(&out_file).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if v["verdict"] != "good" {
            m.insert(v["ip"].as_str().unwrap().to_owned(), v["verdict"].as_str().unwrap().to_owned());
        }
    }
    m
}

#[test]
fn tail_and_score_produce_and_consume_over_tls_and_untrusted_or_plaintext_clients_are_refused() {
    let broker = SecureBroker::start(false);
    let kafka = broker.config("");
    let dir = broker.dir.path();

    // roost tail → (TLS) → tansu → (TLS) → roost score → Redis and the verdicts topic
    let log = dir.join("access.log");
    let out = Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(["generate", "--lines", "3000", "--out"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = replay_verdicts(&log);
    assert!(want.len() >= 3, "the generated log has attackers: {want:?}");
    let name = unique("tls");
    let (requests, verdicts) = (format!("{name}-requests"), format!("{name}-verdicts"));
    let topics = [
        ("requests", requests.as_str()),
        ("deadletter", &format!("{name}-deadletter")),
        ("verdicts", verdicts.as_str()),
        ("overrides", &format!("{name}-overrides")),
        ("feeds", &format!("{name}-feeds")),
    ];
    let prefix = format!("{name}:");
    let (tail_port, score_port) = (free_port(), free_port());
    let tail_cfg = dir.join("tail.toml");
    std::fs::write(
        &tail_cfg,
        format!(
            "{}\n[tail]\ncheckpoint = \"{}\"\nstart = \"beginning\"\npoll_interval = \"50ms\"\nbatch_bytes = 131072\n\
             listen = \"127.0.0.1:{tail_port}\"\n[score]\npartitions = 2\n[[logs]]\npath = \"{}\"\nformat = \"combined\"\n",
            kafka_toml(&kafka, &topics),
            dir.join("tail.json").display(),
            log.display()
        ),
    )
    .unwrap();
    let score_cfg = dir.join("score.toml");
    std::fs::write(
        &score_cfg,
        format!(
            "{}\n[redis]\nurl = \"{}\"\nprefix = \"{prefix}\"\n[score]\ngroup = \"{name}-score\"\npartitions = 2\n\
             listen = \"127.0.0.1:{score_port}\"\n",
            kafka_toml(&kafka, &topics),
            redis()
        ),
    )
    .unwrap();
    let mut tail = Proc::roost("tail", &tail_cfg, "tail");
    let mut score = Proc::roost("score", &score_cfg, "score");
    let mut store = Store::new(&RedisConfig { url: redis(), prefix, ..Default::default() }).unwrap();
    let mut got = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        got = store.load_all().unwrap().into_iter().map(|(k, v)| (k, v.verdict.to_string())).collect();
        if got == want {
            break;
        }
        assert!(tail.running() && score.running(), "tail and score keep running");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(got, want, "the scorer, reading over TLS, reached replay's verdicts");
    let published = metric(tail_port, "roost_tail_events_total").expect("roost tail exports roost_tail_events_total");
    assert_eq!(published, 3000.0, "every line went out over TLS");
    // the verdicts the scorer produced are on the topic, read back over TLS
    let mut topic = BTreeMap::new();
    roost_kafka::read_to_end(&kafka, &verdicts, Duration::from_secs(60), |r| {
        let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
        topic.insert(String::from_utf8(r.key).unwrap(), v["to"].as_str().unwrap().to_owned());
    })
    .unwrap();
    topic.retain(|_, v| v != "good");
    assert_eq!(topic, want, "the verdicts topic holds the scorer's verdicts");

    // The same reads are refused, with librdkafka's reason, for a client that does not trust
    // the broker's CA or speaks plaintext to the TLS port.
    let mut unknown_ca = kafka.clone();
    unknown_ca.properties.remove("ssl.ca.location");
    refused("a broker certificate from an unknown CA", &unknown_ca, &verdicts, &["certificate verify failed"]);
    refused(
        "plaintext at the TLS port",
        &plaintext(&kafka, kafka.brokers.clone()),
        &verdicts,
        &["timed out", "Disconnected", "transport"],
    );
}

#[test]
fn sasl_scram_inside_tls_reads_with_the_right_password_and_a_wrong_one_is_refused() {
    let broker = SecureBroker::start(true);
    let kafka = broker.config(PASSWORD);
    let topic = unique("sasl");
    // Fresh clients, a few times: tansu answers about a third of librdkafka's SCRAM handshakes
    // with invalid-proof whatever the password (module doc).
    let mut last = String::new();
    let ok = (0..6).any(|_| {
        let r = roost_kafka::ensure_topic(&kafka, &topic, 1, false)
            .and_then(|()| roost_kafka::read_to_end(&kafka, &topic, Duration::from_secs(20), |_| {}));
        if let Err(e) = &r {
            last = e.to_string();
        }
        r.is_ok()
    });
    assert!(ok, "the right password never read the topic: {last}");
    refused("a wrong password", &broker.config("not the password"), &topic, &["SASL authentication error"]);
    refused(
        "no SASL at tansu's own port",
        &plaintext(&kafka, format!("127.0.0.1:{}", broker.plain_port)),
        &topic,
        &["timed out", "Disconnected", "transport", "Broken pipe"],
    );
}
