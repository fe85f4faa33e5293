//! `roost flows` against a real exporter and the reference collector: softflowd (Debian) reads a
//! pcap made here and exports it as NetFlow v5, v9 and IPFIX, once to `roost flows` and once to
//! nfcapd (nfdump, Debian); the records roost publishes to the flows topic must be the records
//! nfdump decodes from the same export. The port scan in the traffic becomes evidence on the
//! requests topic, and `roost score` turns it into a verdict in Redis with its reason. Garbage
//! datagrams are counted, not fatal.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A flow as both sides report it: src, dst, ports, protocol, packets, bytes.
type Key = (String, String, u16, u16, u8, u64, u64);

/// Writes a pcap of one-directional conversations (so each yields one flow record): TCP
/// sessions to a web server, UDP to a DNS server, a SYN scan of 40 ports, IPv6 TCP sessions.
/// Returns the number of IPv4 and IPv6 flows.
fn make_pcap(path: &Path) -> (usize, usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    // pcap global header: magic, v2.4, tz 0, sigfigs 0, snaplen 65535, Ethernet
    f.write_all(&0xa1b2_c3d4u32.to_le_bytes()).unwrap();
    f.write_all(&[2, 0, 4, 0]).unwrap();
    f.write_all(&[0; 8]).unwrap();
    f.write_all(&65535u32.to_le_bytes()).unwrap();
    f.write_all(&1u32.to_le_bytes()).unwrap();
    let mut t_us: u64 = 1_764_000_000_000_000;
    let packet = |f: &mut std::io::BufWriter<std::fs::File>, frame: &[u8], t: &mut u64| {
        *t += 1000;
        f.write_all(&((*t / 1_000_000) as u32).to_le_bytes()).unwrap();
        f.write_all(&((*t % 1_000_000) as u32).to_le_bytes()).unwrap();
        f.write_all(&(frame.len() as u32).to_le_bytes()).unwrap();
        f.write_all(&(frame.len() as u32).to_le_bytes()).unwrap();
        f.write_all(frame).unwrap();
    };
    let eth = |v6: bool| {
        let mut e = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        e.extend_from_slice(if v6 { &[0x86, 0xdd] } else { &[0x08, 0x00] });
        e
    };
    let l4 = |proto: u8, sport: u16, dport: u16, flags: u8, payload: usize| {
        let mut h = Vec::new();
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&dport.to_be_bytes());
        if proto == 6 {
            h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        } else {
            h.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0]);
        }
        h.extend(std::iter::repeat_n(0x61u8, payload));
        h
    };
    let v4 = |src: [u8; 4], dst: [u8; 4], proto: u8, seg: &[u8]| {
        let mut ip = vec![0x45, 0];
        ip.extend_from_slice(&((20 + seg.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        let mut sum: u32 = ip.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let ck = !(sum as u16);
        ip[10..12].copy_from_slice(&ck.to_be_bytes());
        let mut frame = eth(false);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(seg);
        frame
    };
    let v6 = |src: [u8; 16], dst: [u8; 16], proto: u8, seg: &[u8]| {
        let mut ip = vec![0x60, 0, 0, 0];
        ip.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        ip.extend_from_slice(&[proto, 64]);
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        let mut frame = eth(true);
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(seg);
        frame
    };
    let (mut n4, mut n6) = (0, 0);
    // 60 web clients: SYN, then 2–6 ACK/PSH segments, then FIN
    for c in 0..60u8 {
        let src = [198, 51, 100, c + 1];
        let sport = 40_000 + u16::from(c);
        packet(&mut f, &v4(src, [192, 0, 2, 10], 6, &l4(6, sport, 443, 0x02, 0)), &mut t_us);
        for k in 0..(2 + c % 5) {
            packet(
                &mut f,
                &v4(src, [192, 0, 2, 10], 6, &l4(6, sport, 443, 0x18, 100 + usize::from(k) * 10)),
                &mut t_us,
            );
        }
        packet(&mut f, &v4(src, [192, 0, 2, 10], 6, &l4(6, sport, 443, 0x11, 0)), &mut t_us);
        n4 += 1;
    }
    // 30 DNS clients
    for c in 0..30u8 {
        packet(
            &mut f,
            &v4([203, 0, 113, c + 1], [192, 0, 2, 53], 17, &l4(17, 5000 + u16::from(c), 53, 0, 40)),
            &mut t_us,
        );
        n4 += 1;
    }
    // a SYN scan: 40 ports of one host, one SYN each
    for p in 0..40u16 {
        packet(&mut f, &v4([203, 0, 113, 200], [192, 0, 2, 20], 6, &l4(6, 61_000, 1 + p * 7, 0x02, 0)), &mut t_us);
        n4 += 1;
    }
    // 20 IPv6 web clients
    for c in 0..20u8 {
        let src = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, c + 1];
        let dst = [0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
        packet(&mut f, &v6(src, dst, 6, &l4(6, 50_000, 80, 0x02, 0)), &mut t_us);
        packet(&mut f, &v6(src, dst, 6, &l4(6, 50_000, 80, 0x18, 300)), &mut t_us);
        n6 += 1;
    }
    f.flush().unwrap();
    (n4, n6)
}

/// Runs softflowd over the pcap, exporting version `v` to `port`, until it exits (bounded).
/// softflowd 1.1.0 reading a file sometimes blocks in accept() on its control socket; a
/// connection to it (softflowctl) lets it go on (../shared/peers/flows-setup.sh does the same).
fn export(dir: &Path, pcap: &Path, v: u8, port: u16) {
    let ctl = dir.join(format!("sfd-{v}-{port}.ctl"));
    let mut sfd = Command::new("/usr/sbin/softflowd");
    sfd.arg("-D")
        .arg("-r")
        .arg(pcap)
        .args(["-n", &format!("127.0.0.1:{port}"), "-v", &v.to_string(), "-m", "1000000"])
        .arg("-c")
        .arg(&ctl)
        .arg("-p")
        .arg(dir.join(format!("sfd-{v}-{port}.pid")));
    let mut p = Proc::spawn(&format!("softflowd -v {v}"), sfd);
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.running() {
        assert!(Instant::now() < deadline, "softflowd -v {v} did not finish");
        std::thread::sleep(Duration::from_millis(200));
        let wchan = std::fs::read_to_string(format!("/proc/{}/wchan", p.pid())).unwrap_or_default();
        if wchan.contains("__skb_wait_for_more_packets") {
            let _ = Command::new("/usr/sbin/softflowctl").arg("-c").arg(&ctl).arg("statistics").output();
        }
    }
}

/// What nfdump decodes from nfcapd's files.
fn nfdump(dir: &Path) -> BTreeMap<Key, usize> {
    let out = Command::new("/usr/bin/nfdump")
        .arg("-R")
        .arg(dir)
        // -6: IPv6 addresses in full, not shortened with ".."
        .args(["-q", "-N", "-6", "-o", "fmt:%sa|%da|%sp|%dp|%pr|%pkt|%byt"])
        .output()
        .expect("nfdump");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut m = BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = l.split('|').map(str::trim).collect();
        if f.len() < 7 {
            continue;
        }
        let proto = match f[4] {
            "TCP" => 6,
            "UDP" => 17,
            "ICMP" => 1,
            p => p.parse().unwrap_or(0),
        };
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap_or_else(|_| panic!("nfdump printed {s:?}")).to_string();
        let key = (
            ip(f[0]),
            ip(f[1]),
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
            proto,
            f[5].parse().unwrap(),
            f[6].parse().unwrap(),
        );
        *m.entry(key).or_insert(0) += 1;
    }
    m
}

#[test]
fn roost_decodes_what_nfdump_decodes_from_softflowd_v5_v9_and_ipfix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pcap = d.join("traffic.pcap");
    let (n4, n6) = make_pcap(&pcap);
    let topic = unique("flows");
    let requests = unique("requests");
    let (flow_port, metrics_port, score_port) = (free_port(), free_port(), free_port());
    let prefix = format!("{}:", unique("rf"));
    let cfg = d.join("roost.toml");
    std::fs::write(
        &cfg,
        format!(
            "[kafka]\nbrokers = \"{}\"\n[kafka.topics]\nflows = \"{topic}\"\nrequests = \"{requests}\"\n\
             deadletter = \"{requests}-dead\"\nverdicts = \"{requests}-verdicts\"\noverrides = \"{requests}-overrides\"\nfeeds = \"{requests}-feeds\"\n\
             [redis]\nurl = \"{}\"\nprefix = \"{prefix}\"\n\
             [score]\ngroup = \"{requests}-group\"\npartitions = 2\nlisten = \"127.0.0.1:{score_port}\"\n\
             [flows]\nlisten = [\"127.0.0.1:{flow_port}\"]\npartitions = 2\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\
             exporters = [\"127.0.0.1/32\"]\n\
             [flows.features]\nportscan_ports = 30\n",
            kafka(),
            redis()
        ),
    )
    .unwrap();
    let mut roost = Proc::roost("roost flows", &cfg, "flows");
    wait_for(Duration::from_secs(30), "roost flows", || http_get(metrics_port, "/healthz").is_some());

    let mut want: BTreeMap<u8, BTreeMap<Key, usize>> = BTreeMap::new();
    for v in [5u8, 9, 10] {
        let nf_port = free_port();
        let nf_dir = d.join(format!("nfcapd-{v}"));
        std::fs::create_dir_all(&nf_dir).unwrap();
        let mut c = Command::new("/usr/bin/nfcapd");
        c.arg("-w").arg(&nf_dir).args(["-p", &nf_port.to_string(), "-b", "127.0.0.1"]);
        let mut nf = Proc::spawn(&format!("nfcapd v{v}"), c);
        wait_for(Duration::from_secs(10), "nfcapd to bind its port", || udp_rx_queue(nf_port).is_some());
        export(d, &pcap, v, nf_port);
        export(d, &pcap, v, flow_port);
        // nfcapd stops on SIGTERM without draining its socket: wait until it has read every datagram
        // (it finishes the one in hand before it looks at the signal), then until it has exited,
        // its file written and closed
        wait_for(Duration::from_secs(10), "nfcapd to read what was exported", || udp_rx_queue(nf_port) == Some(0));
        let pid = nf.pid().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        wait_for(Duration::from_secs(10), "nfcapd to write its file and exit", || !nf.running());
        assert!(
            std::fs::read_dir(&nf_dir).unwrap().flatten().any(|e| !e.file_name().to_string_lossy().contains("current")),
            "nfcapd left no file"
        );
        let got = nfdump(&nf_dir);
        let total: usize = got.values().sum();
        let expected = if v == 5 { n4 } else { n4 + n6 };
        assert_eq!(
            total, expected,
            "nfdump decoded {total} records from softflowd -v {v}, the pcap has {expected} flows"
        );
        want.insert(v, got);
        drop(nf);
    }

    // what roost published, by version
    let all: usize = want.values().map(|m| m.values().sum::<usize>()).sum();
    let kcfg = roost_kafka::KafkaConfig {
        brokers: kafka(),
        topics: roost_kafka::Topics { flows: topic.clone(), ..Default::default() },
        ..Default::default()
    };
    let mut got: BTreeMap<u8, BTreeMap<Key, usize>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // each source's flows under one key (its bucket), so in one partition, in order
    let mut keys: BTreeMap<std::net::IpAddr, Vec<u8>> = BTreeMap::new();
    loop {
        got.clear();
        let mut syn_only = 0;
        roost_kafka::read_to_end(&kcfg, &topic, Duration::from_secs(30), |r| {
            // many flows to a record: goflow2's protobuf messages, length-delimited
            let flows = roost_flows::topic::decode(r.value.as_deref().unwrap()).unwrap();
            assert!(!flows.is_empty());
            for f in flows {
                let key = keys.entry(f.src).or_insert_with(|| r.key.clone());
                assert_eq!(*key, r.key, "{}'s flows under one key", f.src);
                syn_only += usize::from(f.syn_only());
                let key = (f.src.to_string(), f.dst.to_string(), f.src_port, f.dst_port, f.proto, f.packets, f.bytes);
                *got.entry(f.version as u8).or_default().entry(key).or_insert(0) += 1;
            }
        })
        .unwrap();
        let n: usize = got.values().map(|m| m.values().sum::<usize>()).sum();
        if n >= all || Instant::now() > deadline {
            assert_eq!(syn_only, 3 * 40, "the scan's flows are SYN-only in every version");
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for v in [5u8, 9, 10] {
        assert_eq!(got.get(&v), want.get(&v), "NetFlow v{v}: roost and nfdump disagree");
    }
    assert_eq!(metric(metrics_port, "roost_flows_records_total"), Some(all as f64));
    let packets: u64 = want.values().flat_map(|m| m.iter().map(|(k, n)| k.5 * *n as u64)).sum();
    assert_eq!(metric(metrics_port, "roost_flows_packets_total"), Some(packets as f64));
    assert!(metric(metrics_port, "roost_flows_templates_total").unwrap_or(0.0) >= 2.0);

    // the scan: evidence on the requests topic, a verdict from the scorer. The three exports
    // carry the same flows (the same pcap times): one window, so each kind is reported once,
    // when its threshold is crossed
    assert_eq!(metric(metrics_port, "roost_flows_evidence_total"), Some(2.0), "portscan and incomplete handshakes");
    let _score = Proc::roost("roost score", &cfg, "score");
    let mut store = roost_verdicts::Store::new(&roost_verdicts::RedisConfig {
        url: redis(),
        prefix: prefix.clone(),
        ..Default::default()
    })
    .unwrap();
    let mut verdict = None;
    wait_for(Duration::from_secs(60), "the scanner's verdict in Redis", || {
        verdict = store.load_all().ok().and_then(|all| all.get("203.0.113.200").cloned());
        verdict.is_some()
    });
    let v = verdict.unwrap();
    assert_eq!(v.verdict.as_str(), "dubious", "{v:?}");
    assert!(v.reasons.iter().any(|r| r.contains("touched 30 ports on 192.0.2.20 in 60 s (NetFlow)")), "{v:?}");
    // a SYN scan proves nothing about its source: dubious at most, and said so
    assert!(v.reasons.iter().any(|r| r.contains("possibly spoofed")), "{v:?}");
    let all = store.load_all().unwrap();
    assert_eq!(all.len(), 1, "only the scanner is flagged: {all:?}");

    // at a real router: the scanner's verdict, read from the verdicts topic by `roost bgp`, is
    // refused a flowspec rule as possibly spoofed, while another dubious verdict on the same
    // topic, from a rule's evidence, is diverted (so the mark survives the topic, and the
    // controller is not merely silent)
    let (bgp_port, api_port, bgp_listen) = (free_port(), free_port(), free_port());
    let bgp_cfg = d.join("bgp.toml");
    std::fs::write(
        &bgp_cfg,
        format!(
            "[kafka]\nbrokers = \"{}\"\n[kafka.topics]\nverdicts = \"{requests}-verdicts\"\n[bgp]\nasn = 65003\n\
             router_id = \"127.0.0.4\"\nhold_time = 9\nlisten = \"127.0.0.1:{bgp_listen}\"\nprotect = [\"192.0.2.0/24\"]\nallowlist = []\n\
             peers = [{{ address = \"127.0.0.1:{bgp_port}\", local_address = \"127.0.0.4\", peer_as = 65000 }}]\n",
            kafka()
        ),
    )
    .unwrap();
    let router = gobgpd(d, bgp_port, api_port);
    let _bgp = Proc::roost("roost bgp", &bgp_cfg, "bgp");
    wait_for(Duration::from_secs(30), "the BGP session", || metric(bgp_listen, "roost_bgp_session_up") == Some(1.0));
    let vcfg = roost_kafka::KafkaConfig {
        brokers: kafka(),
        topics: roost_kafka::Topics { verdicts: format!("{requests}-verdicts"), ..Default::default() },
        ..Default::default()
    };
    send_verdicts(&vcfg, &[("203.0.113.201", "dubious", -0.3, 3_600_000)]);
    wait_for(Duration::from_secs(30), "the rule-evidence verdict's flowspec rule", || {
        rib(api_port, "ipv4-flowspec").contains("[source: 203.0.113.201/32]")
    });
    wait_for(Duration::from_secs(15), "the scanner's verdict refused as spoofable", || {
        metric(bgp_listen, "roost_bgp_rules_refused{reason=\"spoofable\"}") == Some(1.0)
    });
    // and the router itself, or roost's own BGP address, can never be diverted: bad verdicts on
    // them (forged evidence, a mistake) are refused as allowlisted with the allowlist empty (it
    // holds loopback by default)
    send_verdicts(&vcfg, &[("127.0.0.1", "bad", -0.9, 3_600_000), ("127.0.0.4", "bad", -0.9, 3_600_000)]);
    wait_for(Duration::from_secs(15), "the router's and roost's addresses refused", || {
        metric(bgp_listen, "roost_bgp_rules_refused{reason=\"allowlisted\"}") == Some(2.0)
    });
    let v4 = rib(api_port, "ipv4-flowspec");
    assert!(!v4.contains("203.0.113.200"), "a possibly spoofed source was diverted: {v4}");
    assert!(!v4.contains("127.0.0."), "a router or roost itself was diverted: {v4}");
    assert_eq!(metric(bgp_listen, "roost_bgp_rules_planned"), Some(1.0));
    drop(router);

    // an export from an address not in flows.exporters (127.0.0.2 is loopback too): counted
    // and dropped before decoding
    assert_eq!(metric(metrics_port, "roost_flows_foreign_datagrams_total"), Some(0.0));
    let stranger = UdpSocket::bind("127.0.0.2:0").unwrap();
    stranger.send_to(b"\x00\x09 not decoded", ("127.0.0.1", flow_port)).unwrap();
    wait_for(Duration::from_secs(10), "the stranger's datagram to be counted", || {
        metric(metrics_port, "roost_flows_foreign_datagrams_total") == Some(1.0)
    });
    assert_eq!(metric(metrics_port, "roost_flows_decode_errors_total"), None, "not decoded");

    // garbage: counted with the exporter and the reason; the collector goes on
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    for bad in [&b"\x00\x09"[..], b"hello, collector", &[0, 10, 0, 200, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]]
    {
        s.send_to(bad, ("127.0.0.1", flow_port)).unwrap();
    }
    wait_for(Duration::from_secs(10), "the garbage to be counted", || {
        metric(metrics_port, "roost_flows_decode_errors_total").unwrap_or(0.0) >= 3.0
    });
    let body = http_get(metrics_port, "/metrics").unwrap();
    assert!(body.contains("roost_flows_decode_errors_total{exporter=\"127.0.0.1\",reason=\"truncated\"} 1"), "{body}");
    assert!(body.contains("reason=\"unsupported_version\""), "{body}");
    assert!(roost.running());
    // and kept on the dead-letter topic, raw (hex) with the reason
    let mut letters = Vec::new();
    wait_for(Duration::from_secs(20), "the dead letters", || {
        letters.clear();
        roost_kafka::read_to_end(&kcfg, &format!("{requests}-dead"), Duration::from_secs(10), |r| {
            letters.push(serde_json::from_slice::<serde_json::Value>(r.value.as_deref().unwrap()).unwrap());
        })
        .unwrap();
        letters.len() >= 3
    });
    assert!(letters.iter().any(|l| l["kind"] == "flow_truncated" && l["line"] == "0009"), "{letters:?}");
    assert!(letters.iter().any(|l| l["file"].as_str().unwrap().starts_with("udp://127.0.0.1:")), "{letters:?}");

    // a router whose uptime counter wrapped a second ago exports a port scan (completed
    // handshakes, so proven) that ran in the seconds before the wrap: the flows are dated then,
    // not 49.7 days ahead, so neither the collector nor the scorer clamps anything, and the
    // verdict lasts its 30 minutes from now (softflowd's exports above, made from a pcap, had
    // some times clamped already)
    let clamped = |port, name: &str| metric(port, name).expect("the clamp counter is exported");
    let (flows_clamped, score_clamped) = (
        clamped(metrics_port, "roost_flows_clamped_times_total"),
        clamped(score_port, "roost_score_clamped_times_total"),
    );
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let flows: Vec<[u8; 48]> = (1..=30u16)
        .map(|port| {
            let mut r = [0u8; 48];
            r[0..4].copy_from_slice(&[203, 0, 113, 210]);
            r[4..8].copy_from_slice(&[192, 0, 2, 30]);
            r[16..20].copy_from_slice(&3u32.to_be_bytes()); // packets
            r[20..24].copy_from_slice(&180u32.to_be_bytes()); // bytes
            r[24..28].copy_from_slice(&(u32::MAX - 5_000).to_be_bytes()); // first: 6 s before the export
            r[28..32].copy_from_slice(&(u32::MAX - 1_000).to_be_bytes()); // last: 2 s before
            r[32..34].copy_from_slice(&40_000u16.to_be_bytes());
            r[34..36].copy_from_slice(&port.to_be_bytes());
            r[37] = 0x12; // SYN and ACK: the handshake completed
            r[38] = 6;
            r
        })
        .collect();
    let mut datagram = Vec::new();
    datagram.extend_from_slice(&5u16.to_be_bytes());
    datagram.extend_from_slice(&(flows.len() as u16).to_be_bytes());
    datagram.extend_from_slice(&1_000u32.to_be_bytes()); // sysUpTime: 1 s after the wrap
    datagram.extend_from_slice(&(now.as_secs() as u32).to_be_bytes());
    datagram.extend_from_slice(&now.subsec_nanos().to_be_bytes());
    datagram.extend_from_slice(&[0; 8]); // sequence, engine, sampling
    for r in &flows {
        datagram.extend_from_slice(r);
    }
    s.send_to(&datagram, ("127.0.0.1", flow_port)).unwrap();
    let mut verdict = None;
    wait_for(Duration::from_secs(60), "the wrapped router's scanner's verdict", || {
        verdict = store.load_all().ok().and_then(|all| all.get("203.0.113.210").cloned());
        verdict.is_some()
    });
    let v = verdict.unwrap();
    assert!(v.reasons.iter().any(|r| r.contains("touched 30 ports on 192.0.2.30")), "{v:?}");
    assert_eq!(clamped(metrics_port, "roost_flows_clamped_times_total"), flows_clamped, "a flow dated in the future");
    assert_eq!(clamped(score_port, "roost_score_clamped_times_total"), score_clamped, "an event dated in the future");
    let expires = v.expires.expect("a verdict with an expiry").millis();
    let now = now.as_millis() as i64;
    assert!(
        expires > now + 29 * 60_000 && expires < now + 31 * 60_000,
        "the verdict ends {} s from now, not 30 min: {v:?}",
        (expires - now) / 1000
    );
}

/// The bytes waiting in the receive queue of the UDP socket bound to 127.0.0.1:`port`, if one is.
fn udp_rx_queue(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let mut cols = line.split_whitespace();
        if cols.nth(1)? != local {
            return None;
        }
        let queues = cols.nth(2)?;
        u64::from_str_radix(queues.split(':').nth(1)?, 16).ok()
    })
}

/// A NetFlow v5 datagram of 30 records, each from its own source (10.`seq`.0.`i`).
fn v5_datagram(seq: u8) -> Vec<u8> {
    let now = unix_now() as u32;
    let mut p = Vec::new();
    for x in [5u16, 30] {
        p.extend_from_slice(&x.to_be_bytes());
    }
    for x in [60_000u32, now, 0, u32::from(seq) * 30] {
        p.extend_from_slice(&x.to_be_bytes());
    }
    p.extend_from_slice(&[0, 0, 0, 0]);
    for i in 0..30u8 {
        p.extend_from_slice(&[10, seq, 0, i, 192, 0, 2, 10, 0, 0, 0, 0, 0, 1, 0, 2]);
        for x in [3u32, 180, 59_000, 59_500] {
            p.extend_from_slice(&x.to_be_bytes());
        }
        p.extend_from_slice(&40_000u16.to_be_bytes());
        p.extend_from_slice(&443u16.to_be_bytes());
        p.extend_from_slice(&[0, 0x1b, 6, 0, 0, 0, 0, 0, 24, 24, 0, 0]);
    }
    p
}

/// `roost flows` in `d`, publishing one exporter's v5 records to `topic` (one partition, no
/// features) on the broker at 127.0.0.1:`broker`, with `kafka_properties` (TOML lines of
/// `[kafka.properties]`) for its producer.
struct Collector {
    _roost: Proc,
    flow_port: u16,
    metrics_port: u16,
    exporter: UdpSocket,
}

impl Collector {
    fn start(d: &Path, broker: u16, topic: &str, kafka_properties: &str) -> Collector {
        let (flow_port, metrics_port) = (free_port(), free_port());
        let cfg = d.join("roost.toml");
        std::fs::write(
            &cfg,
            format!(
                "[kafka]\nbrokers = \"127.0.0.1:{broker}\"\n[kafka.properties]\n{kafka_properties}\n\
                 [kafka.topics]\nflows = \"{topic}\"\ndeadletter = \"{topic}-dead\"\n\
                 [flows]\nlisten = [\"127.0.0.1:{flow_port}\"]\npartitions = 1\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\
                 [flows.features]\nenabled = false\n"
            ),
        )
        .unwrap();
        let roost = Proc::roost("roost flows", &cfg, "flows");
        wait_for(Duration::from_secs(30), "roost flows", || http_get(metrics_port, "/healthz").is_some());
        Collector { _roost: roost, flow_port, metrics_port, exporter: UdpSocket::bind("127.0.0.1:0").unwrap() }
    }

    /// Exports datagrams `seqs` (30 records each, from sources of their own), `pause` apart.
    fn export(&self, seqs: std::ops::Range<u8>, pause: Duration) {
        for seq in seqs {
            self.exporter.send_to(&v5_datagram(seq), ("127.0.0.1", self.flow_port)).unwrap();
            std::thread::sleep(pause);
        }
    }

    fn metric(&self, name: &str) -> Option<f64> {
        metric(self.metrics_port, name)
    }

    /// Waits until the broker has acknowledged `n` records in all.
    fn wait_published(&self, n: f64, within: Duration, what: &str) {
        wait_for(within, what, || self.metric("roost_flows_published_total") == Some(n));
    }
}

/// The distinct flow sources in `topic` on the broker at 127.0.0.1:`broker`, read to its end.
fn sources_in(broker: u16, topic: &str) -> std::collections::BTreeSet<std::net::IpAddr> {
    let kcfg = roost_kafka::KafkaConfig {
        brokers: format!("127.0.0.1:{broker}"),
        topics: roost_kafka::Topics { flows: topic.to_owned(), ..Default::default() },
        ..Default::default()
    };
    let mut sources = std::collections::BTreeSet::new();
    roost_kafka::read_to_end(&kcfg, topic, Duration::from_secs(30), |r| {
        for f in roost_flows::topic::decode(r.value.as_deref().unwrap_or_default()).expect("a flows-topic value") {
            sources.insert(f.src);
        }
    })
    .unwrap();
    sources
}

#[test]
fn flows_taken_while_the_broker_is_away_are_published_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker_dir = d.join("broker");
    std::fs::create_dir_all(&broker_dir).unwrap();
    let port = free_port();
    // sqlite storage: the topic and the producer's state survive the restart, as a Kafka
    // broker's do (tansu 0.6 in memory forgets the producer and refuses it for good; and an
    // outage longer than `message.timeout.ms` fails tansu's sqlite idempotence check)
    let mut broker = Some(own_broker(&broker_dir, port));
    let topic = unique("flows-outage");
    let roost = Collector::start(d, port, &topic, "");

    // one exporter's 20 datagrams before the outage, 40 during it (more batches than the
    // publisher keeps in flight)
    roost.export(0..20, Duration::ZERO);
    roost.wait_published(600.0, Duration::from_secs(20), "the first 600 records published");
    drop(broker.take());
    // each more than the 20 ms a receiver waits before it hands a batch on
    roost.export(20..60, Duration::from_millis(50));
    wait_for(Duration::from_secs(20), "the records of the outage decoded", || {
        roost.metric("roost_flows_records_total") == Some(1800.0)
    });
    assert_eq!(roost.metric("roost_flows_published_total"), Some(600.0), "acknowledged while away");
    broker = Some(own_broker(&broker_dir, port));
    roost.wait_published(1800.0, Duration::from_secs(60), "every record published after the outage");
    assert_eq!(roost.metric("roost_flows_dropped_total"), Some(0.0));
    assert_eq!(roost.metric("roost_flows_queued_records"), Some(0.0));
    assert_eq!(sources_in(port, &topic).len(), 1800, "every record in the topic");
    drop(broker);
}

#[test]
fn a_broker_that_forgot_the_producer_gets_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    // in memory: restarted, tansu has forgotten the topic and the producer (as a broker of a
    // new cluster would), and refuses the old producer's records for good
    let memory = |d: &std::path::Path| {
        let mut c = Command::new(tansu());
        let url = format!("tcp://127.0.0.1:{port}");
        c.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ]);
        c.current_dir(d).env("RUST_LOG", "warn");
        let p = Proc::spawn("tansu", c);
        wait_for(Duration::from_secs(20), "tansu to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        p
    };
    let mut broker = Some(memory(d));
    let topic = unique("flows-forgot");
    // deliveries time out after 2 s: failed batches during the outage
    let roost = Collector::start(d, port, &topic, "\"message.timeout.ms\" = \"2000\"");
    roost.export(0..20, Duration::ZERO);
    roost.wait_published(600.0, Duration::from_secs(20), "the first 600 records published");
    drop(broker.take());
    roost.export(20..40, Duration::ZERO);
    wait_for(Duration::from_secs(30), "deliveries failing", || {
        roost.metric("roost_flows_publish_errors_total").unwrap_or(0.0) >= 1.0
    });
    broker = Some(memory(d));
    let kcfg = roost_kafka::KafkaConfig { brokers: format!("127.0.0.1:{port}"), ..Default::default() };
    roost_kafka::ensure_topic(&kcfg, &topic, 1, false).unwrap();
    roost.wait_published(1200.0, Duration::from_secs(60), "the outage's records published by a new producer");
    assert_eq!(sources_in(port, &topic).len(), 600, "the outage's records in the new topic");
    drop(broker);
}
