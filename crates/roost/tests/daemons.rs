//! Every daemon behaves alike at its edges (`crate::runtime` in the binary): a configured
//! listener that is taken is an error at start, and SIGTERM stops the daemon cleanly (exit 0).
//! Against the real broker and Redis scripts/services.sh started.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, http_get, kafka, redis, unique, wait_for};

/// A daemon under test: its subcommand and a config whose metrics (or API) listener is `port`.
struct Daemon {
    name: &'static str,
    args: &'static [&'static str],
    config: fn(dir: &Path, port: u16) -> String,
}

fn kafka_section(dir: &Path) -> String {
    let t = unique(&dir.file_name().unwrap().to_string_lossy());
    format!(
        "[kafka]\nbrokers = \"{}\"\n[kafka.topics]\nrequests = \"{t}-requests\"\nverdicts = \"{t}-verdicts\"\n\
         overrides = \"{t}-overrides\"\naudit = \"{t}-audit\"\nfeeds = \"{t}-feeds\"\ndeadletter = \"{t}-dead\"\n\
         flows = \"{t}-flows\"\n",
        kafka()
    )
}

fn redis_section() -> String {
    format!("[redis]\nurl = \"{}\"\nprefix = \"{}:\"\n", redis(), unique("daemons"))
}

fn daemons() -> Vec<Daemon> {
    vec![
        Daemon {
            name: "tail",
            args: &["tail"],
            config: |d, port| {
                std::fs::write(d.join("access.log"), "").unwrap();
                let k = kafka_section(d);
                let d = d.display();
                format!(
                    "{k}[[logs]]\npath = \"{d}/access.log\"\nformat = \"combined\"\n[tail]\ncheckpoint = \"{d}/tail.json\"\n\
                     listen = \"127.0.0.1:{port}\"\n[score]\npartitions = 1\n"
                )
            },
        },
        Daemon {
            name: "score",
            args: &["score"],
            config: |d, port| {
                let group = unique("group");
                format!(
                    "{}{}[score]\ngroup = \"{group}\"\npartitions = 1\nlisten = \"127.0.0.1:{port}\"\n",
                    kafka_section(d),
                    redis_section()
                )
            },
        },
        Daemon {
            name: "flows",
            args: &["flows"],
            config: |d, port| {
                format!(
                    "{}[flows]\nlisten = [\"127.0.0.1:{}\"]\npartitions = 1\nmetrics_listen = \"127.0.0.1:{port}\"\n[score]\npartitions = 1\n",
                    kafka_section(d),
                    free_udp_port()
                )
            },
        },
        Daemon {
            name: "bgp",
            args: &["bgp"],
            config: |d, port| format!("{}[bgp]\nlisten = \"127.0.0.1:{port}\"\n", kafka_section(d)),
        },
        Daemon {
            name: "feeds run",
            args: &["feeds", "run"],
            config: |d, port| {
                // one feed, on a loopback port nothing answers: fetches fail, the daemon goes on
                let defs = d.join("feeds");
                std::fs::create_dir_all(&defs).unwrap();
                std::fs::write(
                    defs.join("nowhere.toml"),
                    format!(
                        "name = \"nowhere\"\ndescription = \"nothing\"\nurl = \"http://127.0.0.1:{}/feed.txt\"\n\
                         format = \"netset\"\nrefresh = \"1h\"\nmax_age = \"1d\"\n\
                         effect = {{ penalty = 3, verdict = \"dubious\", ttl = \"30m\" }}\nlicence = \"test\"\n",
                        free_port()
                    ),
                )
                .unwrap();
                format!(
                    "[feeds]\ndir = \"{defs}\"\ncache_dir = \"{d}/cache\"\nlisten = \"127.0.0.1:{port}\"\n\
                     [feeds.fetch]\ntimeout = \"1s\"\nretries = 0\n",
                    defs = defs.display(),
                    d = d.display()
                )
            },
        },
        Daemon {
            name: "up",
            args: &["up"],
            config: |d, port| {
                std::fs::write(d.join("access.log"), "").unwrap();
                let d = d.display();
                format!(
                    "[[logs]]\npath = \"{d}/access.log\"\n[up]\nlisten = \"127.0.0.1:{port}\"\nproxy = false\nadmin = false\n"
                )
            },
        },
        Daemon {
            name: "admin",
            args: &["admin"],
            config: |d, port| {
                std::fs::write(d.join("users.toml"), "").unwrap();
                std::fs::write(d.join("secret"), "a proxy secret of at least sixteen bytes\n").unwrap();
                let (k, d) = (kafka_section(d), d.display());
                format!(
                    "{k}{}[proxy.challenge]\nsecret_file = \"{d}/secret\"\n\
                     [admin]\nlisten = \"127.0.0.1:{port}\"\nusers_file = \"{d}/users.toml\"\n",
                    redis_section()
                )
            },
        },
        Daemon {
            name: "proxy",
            args: &["proxy"],
            config: |d, port| {
                std::fs::write(d.join("secret"), "a proxy secret of at least sixteen bytes\n").unwrap();
                let (listen, upstream) = (free_port(), free_port());
                let d = d.display();
                format!(
                    "{}[proxy]\nlisten = [\"127.0.0.1:{listen}\"]\nupstreams = [\"127.0.0.1:{upstream}\"]\n\
                     metrics_listen = \"127.0.0.1:{port}\"\nthreads = 1\ngrace_period = \"1s\"\nshutdown_timeout = \"1s\"\n\
                     pid_file = \"{d}/proxy.pid\"\nupgrade_sock = \"{d}/upgrade.sock\"\n\
                     [proxy.challenge]\nsecret_file = \"{d}/secret\"\n",
                    redis_section()
                )
            },
        },
    ]
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn roost(d: &Daemon, config: &Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_roost"))
        .arg("--config")
        .arg(config)
        .args(d.args)
        .env("ROOST_LOG", "info,rdkafka=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (bounded) for a child to exit; kills it and fails when it does not.
fn exit_within(child: &mut std::process::Child, limit: Duration, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {limit:?}:\n{}", stderr_of(child));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stderr_of(child: &mut std::process::Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut s);
    }
    s
}

#[test]
fn a_taken_listener_is_an_error_for_every_daemon() {
    for d in daemons() {
        let dir = tempfile::tempdir().unwrap();
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let config = dir.path().join("roost.toml");
        std::fs::write(&config, (d.config)(dir.path(), port)).unwrap();
        let mut child = roost(&d, &config);
        let status = exit_within(&mut child, Duration::from_secs(60), d.name);
        let err = stderr_of(&mut child);
        assert!(!status.success(), "roost {} ran with its listener taken:\n{err}", d.name);
        assert!(err.contains(&format!("listening on 127.0.0.1:{port}")), "roost {}: {err}", d.name);
        eprintln!("[test] roost {}: refused to start, as it should", d.name);
    }
}

#[test]
fn sigterm_stops_every_daemon_cleanly() {
    for d in daemons() {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("roost.toml");
        std::fs::write(&config, (d.config)(dir.path(), port)).unwrap();
        let mut child = roost(&d, &config);
        let mut exited = None;
        wait_for(Duration::from_secs(60), &format!("roost {} to serve /healthz", d.name), || {
            if let Some(s) = child.try_wait().unwrap() {
                exited = Some(s);
                return true;
            }
            http_get(port, "/healthz").is_some_and(|b| b.contains("ok"))
        });
        if let Some(s) = exited {
            panic!("roost {} exited before serving ({s}):\n{}", d.name, stderr_of(&mut child));
        }
        let t = Instant::now();
        let sent = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        assert!(sent.success(), "kill -TERM failed");
        let status = exit_within(&mut child, Duration::from_secs(30), d.name);
        let err = stderr_of(&mut child);
        assert!(status.success(), "roost {} after SIGTERM: {status}\n{err}", d.name);
        eprintln!("[test] roost {}: stopped on SIGTERM in {:?}", d.name, t.elapsed());
    }
}
