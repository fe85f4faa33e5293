//! Time to announce N flowspec rules through `roost bgp` until all are in gobgpd's table, and to
//! withdraw them. Run by `benches/bgp.sh`, which starts the broker, gobgpd and `roost bgp`.
//! The clock starts before the first verdict is published to the verdicts topic, so the figure
//! covers Kafka, planning, BGP and gobgpd's own processing.
//!   bgp-bench --brokers B --topic T --api-port P [--rules 10000]
//!   bgp-bench --brokers B --topic T --publish RULES_FILE --to bad|good   (for bgp-flowspec.sh)

use std::process::Command;
use std::time::{Duration, Instant};

fn opt(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn arg(name: &str, default: Option<&str>) -> String {
    opt(name).or(default.map(str::to_owned)).unwrap_or_else(|| panic!("{name} is required"))
}

fn count(api_port: &str) -> usize {
    let out = Command::new("gobgp")
        .args(["-p", api_port, "global", "rib", "-a", "ipv4-flowspec", "summary"])
        .output()
        .expect("gobgp");
    let s = String::from_utf8_lossy(&out.stdout);
    // "Table ipv4-flowspec\nDestination: 10000, Path: 10000"
    s.split("Destination: ").nth(1).and_then(|r| r.split(',').next()).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

fn publish(cfg: &roost_kafka::KafkaConfig, n: u32, to: &str) {
    let p = roost_kafka::Producer::new(cfg, "bgp-bench").expect("producer");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_millis() as i64;
    let records = (0..n).map(|i| {
        let subject = format!("198.{}.{}.{}", 18 + (i >> 16), (i >> 8) & 255, i & 255);
        let v = format!(
            r#"{{"v":1,"subject":"{subject}","at":{now},"from":"good","to":"{to}","cause":"evidence","reputation":-0.9,"requests":10,"expires":{},"reasons":[{{"source":"bench","text":"bench","weight":1.0}}],"samples":[]}}"#,
            now + 3_600_000
        );
        (subject.into_bytes(), Some(v.into_bytes()))
    });
    rt.block_on(p.send_all(&cfg.topics.verdicts, records)).expect("publishing");
}

/// `--publish FILE --to bad|good`: one verdict per "SRC DST" line of FILE (the rules file of
/// ../shared/peers/bgp-flowspec.sh), then return: that script's ROOST_ADD / ROOST_DEL.
fn publish_file(cfg: &roost_kafka::KafkaConfig, file: &str, to: &str) {
    let text = std::fs::read_to_string(file).expect("the rules file");
    let p = roost_kafka::Producer::new(cfg, "bgp-bench").expect("producer");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("time").as_millis() as i64;
    let records = text.lines().filter_map(|l| l.split_whitespace().next()).map(|src| {
        // a /32 or /128 is named by its address, as the engine names subjects
        let subject = src.strip_suffix("/32").or_else(|| src.strip_suffix("/128")).unwrap_or(src).to_owned();
        let v = format!(
            r#"{{"v":1,"subject":"{src}","at":{now},"from":"good","to":"{to}","cause":"evidence","reputation":-0.9,"requests":10,"expires":{},"reasons":[{{"source":"bench","text":"bench","weight":1.0}}],"samples":[]}}"#,
            now + 3_600_000
        );
        (subject.into_bytes(), Some(v.into_bytes()))
    });
    rt.block_on(p.send_all(&cfg.topics.verdicts, records)).expect("publishing");
}

fn main() {
    let brokers = arg("--brokers", None);
    let topic = arg("--topic", None);
    let api = arg("--api-port", Some(""));
    let n: u32 = arg("--rules", Some("10000")).parse().expect("--rules N");
    let cfg = roost_kafka::KafkaConfig {
        brokers,
        topics: roost_kafka::Topics { verdicts: topic, ..Default::default() },
        ..Default::default()
    };
    if let Some(file) = opt("--publish") {
        publish_file(&cfg, &file, &arg("--to", Some("bad")));
        return;
    }
    for (phase, to, want) in [("announce", "bad", n as usize), ("withdraw", "good", 0)] {
        let t = Instant::now();
        publish(&cfg, n, to);
        let published = t.elapsed();
        let deadline = Instant::now() + Duration::from_secs(300);
        while count(&api) != want {
            assert!(Instant::now() < deadline, "{phase}: gobgpd holds {} of {want} after 300 s", count(&api));
            std::thread::sleep(Duration::from_millis(20));
        }
        println!("{phase}_rules {n}");
        println!("{phase}_published_seconds {:.2}", published.as_secs_f64());
        println!("{phase}_in_gobgpd_seconds {:.2}", t.elapsed().as_secs_f64());
    }
}
