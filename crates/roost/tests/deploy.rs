//! The deployment artefacts in `deploy/` against the real programs that read them: roost loads
//! every configuration shipped there (compose, Kubernetes, the READMEs' examples); nginx and
//! HAProxy accept the log-format snippets and roost parses the lines they then write; BIRD and
//! GoBGP accept the router examples; systemd accepts the units, the sysusers and tmpfiles
//! files; and the proxy's reload script hands the listeners over to a new process. A missing
//! tool fails its test (scripts/install-test-deps.sh installs them), never skips it. docker-compose
//! validates the compose file; the Kubernetes manifests and the Dockerfile get checks of our own
//! (no kubeconform or hadolint in Debian).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs a program that must be installed (`what` says which package has it).
fn run(program: &str, args: &[&str], what: &str) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} ({what}, scripts/install-test-deps.sh): {e}"))
}

fn roost(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_roost"))
        .args(args)
        .env_remove("ROOST_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("runs roost")
}

/// `roost --config FILE config`: the file loads (every key known, every value valid).
fn loads(file: &Path) -> String {
    let out = roost(&["--config", file.to_str().unwrap(), "config"]);
    assert!(out.status.success(), "roost does not load {}: {}", file.display(), text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The `log_format roost …;` directive of deploy/logformats/nginx.conf, as it stands there.
fn nginx_directive() -> String {
    let conf = read(&deploy("logformats/nginx.conf"));
    let start = conf.find("\nlog_format roost ").expect("log_format roost in nginx.conf") + 1;
    let end = start + conf[start..].find("';").expect("the directive ends") + 2;
    conf[start..end].to_owned()
}

/// The ```toml blocks of a Markdown file.
fn toml_blocks(md: &Path) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for l in read(md).lines() {
        let t = l.trim_start();
        if let Some(b) = cur.as_mut() {
            if t.starts_with("```") {
                blocks.push(cur.take().unwrap());
            } else {
                b.push_str(l);
                b.push('\n');
            }
        } else if t.starts_with("```toml") {
            cur = Some(String::new());
        }
    }
    blocks
}

#[test]
fn roost_loads_the_compose_and_kubernetes_configs() {
    let compose = loads(&deploy("docker/roost.toml"));
    assert!(compose.contains("brokers = \"kafka:9092\""), "{compose}");
    assert!(compose.contains("url = \"redis://redis:6379\""), "{compose}");
    let k8s = loads(&deploy("k8s/roost.toml"));
    assert!(k8s.contains("listen = \"0.0.0.0:9751\""), "{k8s}");
    // the ConfigMap is made of that very file
    let kustomization = read(&deploy("k8s/kustomization.yaml"));
    assert!(kustomization.contains("- roost.toml"), "{kustomization}");
    // the nginx log format they read is the one deploy/logformats ships
    let directive = nginx_directive();
    for f in ["docker/roost.toml", "k8s/roost.toml"] {
        assert!(
            read(&deploy(f)).contains(&directive),
            "deploy/{f} does not carry deploy/logformats/nginx.conf's {directive}"
        );
    }
    // the daemons listen where the compose Prometheus scrapes them
    let prom = read(&deploy("docker/prometheus.yml"));
    for (svc, port) in [("tail", 9753), ("score-1", 9751), ("feeds", 9752), ("proxy", 9754), ("flows", 9756)] {
        assert!(prom.contains(&format!("{svc}:{port}")), "prometheus.yml scrapes no {svc}:{port}");
        assert!(compose.contains(&format!("0.0.0.0:{port}")), "nothing listens on 0.0.0.0:{port}");
    }
}

#[test]
fn roost_loads_the_readmes_config_examples() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for md in ["logformats/README.md", "routers/README.md"] {
        for (i, block) in toml_blocks(&deploy(md)).into_iter().enumerate() {
            let f = dir.path().join(format!("{}-{i}.toml", md.replace('/', "-")));
            std::fs::write(&f, &block).unwrap();
            let out = roost(&["--config", f.to_str().unwrap(), "config"]);
            assert!(out.status.success(), "deploy/{md}, TOML example {i} does not load: {}\n{block}", text(&out));
            n += 1;
        }
    }
    assert!(n >= 5, "only {n} examples found");
}

#[test]
fn bird_and_gobgp_accept_the_router_examples() {
    let conf = deploy("routers/bird.conf");
    let out = run("/usr/sbin/bird", &["-p", "-c", conf.to_str().unwrap()], "Debian package bird2");
    assert!(out.status.success(), "bird -p: {}", text(&out));
    let conf = deploy("routers/gobgpd.toml");
    let out = run("/usr/bin/gobgpd", &["-f", conf.to_str().unwrap(), "--dry-run", "-p"], "Debian package gobgpd");
    assert!(out.status.success(), "gobgpd --dry-run: {}", text(&out));
    assert!(!text(&out).contains("\"level\":\"fatal\"") && !text(&out).contains("level=fatal"), "{}", text(&out));
}

/// nginx with the snippet included, logging with both formats, on a port of its own.
fn nginx_conf(dir: &Path, port: u16) -> PathBuf {
    let d = dir.display();
    let conf = dir.join("nginx.conf");
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  include {snippet};\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               server {{ listen 127.0.0.1:{port};\n\
                 access_log {d}/access.log roost;\n    access_log {d}/access.json roost_json;\n\
                 location / {{ default_type text/plain; return 200 \"ok\\n\"; }}\n\
                 location /login {{ return 401; }}\n\
                 location /app {{ proxy_pass http://127.0.0.1:{dead}; }} }}\n}}\n",
            snippet = deploy("logformats/nginx.conf").display(),
            dead = free_port(),
        ),
    )
    .unwrap();
    conf
}

fn send(port: u16, request: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let _ = std::io::Read::read_to_end(&mut s, &mut Vec::new());
}

/// Three requests, each a different shape: quotes in the user agent, a query and a referer, no
/// upstream; a failed login; a dead upstream (an upstream status and time in the log).
fn three_requests(port: u16) {
    send(
        port,
        "GET /a?b=1 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: Mozilla/5.0 \"quoted\" (X11)\r\n\
         Referer: https://ref.example/x\r\nConnection: close\r\n\r\n",
    );
    send(port, "POST /login HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    send(port, "GET /app/page HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n");
}

fn lines(p: &Path) -> usize {
    std::fs::read_to_string(p).map_or(0, |s| s.lines().count())
}

/// `roost replay` of `log` with `args`: every line parsed, and the one client with `n` requests.
fn replays_cleanly(dir: &Path, log: &Path, config: &str, args: &[&str], n: u64) {
    let cfg = dir.join(format!("replay-{}.toml", log.file_name().unwrap().to_str().unwrap()));
    // the clients here are on loopback, which the default allowlist leaves unjudged
    std::fs::write(&cfg, format!("[engine]\nallowlist = []\n{config}")).unwrap();
    let out_json = dir.join(format!("{}.clients.json", log.file_name().unwrap().to_str().unwrap()));
    let mut a =
        vec!["--config", cfg.to_str().unwrap(), "replay", log.to_str().unwrap(), "-o", out_json.to_str().unwrap()];
    a.extend_from_slice(args);
    let out = roost(&a);
    let summary = text(&out);
    assert!(out.status.success(), "roost replay {}: {summary}\n{}", log.display(), read(log));
    assert!(summary.contains("malformed   0"), "{summary}\n{}", read(log));
    let clients: Vec<serde_json::Value> = read(&out_json).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(clients.len(), 1, "{clients:?}");
    assert_eq!(clients[0]["requests"].as_u64(), Some(n), "{clients:?}\n{}", read(log));
}

#[test]
fn nginx_accepts_the_log_formats_and_roost_reads_what_it_writes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = nginx_conf(dir.path(), port);
    let (c, p, e) = (conf.to_str().unwrap(), dir.path().to_str().unwrap(), dir.path().join("error.log"));
    let out = run("/usr/sbin/nginx", &["-t", "-p", p, "-c", c, "-e", e.to_str().unwrap()], "Debian package nginx");
    assert!(out.status.success(), "nginx -t: {}", text(&out));

    let mut cmd = Command::new("/usr/sbin/nginx");
    cmd.args(["-p", p, "-c", c, "-e", e.to_str().unwrap()]);
    let nginx = Proc::spawn("nginx", cmd);
    wait_for(Duration::from_secs(10), "nginx to listen", || TcpStream::connect(("127.0.0.1", port)).is_ok());
    three_requests(port);
    let (log, json) = (dir.path().join("access.log"), dir.path().join("access.json"));
    wait_for(Duration::from_secs(10), "nginx's log lines", || lines(&log) == 3 && lines(&json) == 3);
    drop(nginx);
    eprintln!("{}{}", read(&log), read(&json));

    let directive = nginx_directive();
    replays_cleanly(dir.path(), &log, "", &["--format", "nginx", "--log-format", directive.as_str()], 3);
    // the same through the config file, as the READMEs pair them
    let toml = format!("[[logs]]\npath = \"{}\"\nformat = \"nginx\"\nlog_format = '''{directive}'''\n", log.display());
    replays_cleanly(dir.path(), &log, &toml, &[], 3);
    replays_cleanly(dir.path(), &json, "", &["--format", "json"], 3);
    // and the combined prefix alone still reads
    replays_cleanly(dir.path(), &log, "", &["--format", "combined"], 3);
}

#[test]
fn haproxy_accepts_the_snippet_and_roost_reads_what_it_logs() {
    let snippet = deploy("logformats/haproxy.cfg");
    let out = run("/usr/sbin/haproxy", &["-c", "-f", snippet.to_str().unwrap()], "Debian package haproxy");
    assert!(out.status.success(), "haproxy -c: {}", text(&out));

    // the snippet, logging to its standard output, in front of an nginx
    let dir = tempfile::tempdir().unwrap();
    let (nginx_port, port) = (free_port(), free_port());
    let conf = nginx_conf(dir.path(), nginx_port);
    let mut cmd = Command::new("/usr/sbin/nginx");
    let e = dir.path().join("error.log");
    cmd.args(["-p", dir.path().to_str().unwrap(), "-c", conf.to_str().unwrap(), "-e", e.to_str().unwrap()]);
    let _nginx = Proc::spawn("nginx", cmd);
    let cfg = read(&snippet)
        .replace("log /dev/log local0", "log stdout format raw local0")
        .replace("bind :8080", &format!("bind 127.0.0.1:{port}"))
        .replace("127.0.0.1:8081", &format!("127.0.0.1:{nginx_port}"));
    assert!(cfg.contains("log stdout") && cfg.contains(&format!(":{nginx_port}")), "the snippet changed shape: {cfg}");
    let hcfg = dir.path().join("haproxy.cfg");
    std::fs::write(&hcfg, cfg).unwrap();
    let log = dir.path().join("haproxy.log");
    let _haproxy = Kill(
        Command::new("/usr/sbin/haproxy")
            .args(["-db", "-f", hcfg.to_str().unwrap()])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("haproxy (Debian package haproxy)"),
    );
    wait_for(Duration::from_secs(10), "haproxy and nginx to listen", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok() && TcpStream::connect(("127.0.0.1", nginx_port)).is_ok()
    });
    three_requests(port);
    wait_for(Duration::from_secs(10), "haproxy's log lines", || lines(&log) >= 3);
    eprintln!("{}", read(&log));
    assert!(read(&log).contains("{shop.example|Mozilla/5.0"), "the captures are not where roost looks: {}", read(&log));
    let toml = "[[logs]]\npath = \"-\"\nformat = \"haproxy\"\nhaproxy_request_headers = [\"Host\", \"User-Agent\", \"Referer\"]\n\
                haproxy_utc_offset = \"+0000\"\n";
    replays_cleanly(dir.path(), &log, toml, &[], 3);
}

/// The units as installed, with the binary and the reload script where this checkout has them.
fn units_in(dir: &Path) -> Vec<PathBuf> {
    let mut units = Vec::new();
    for e in std::fs::read_dir(deploy("systemd")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "service") {
            let t = read(&p).replace("/usr/local/bin/roost", env!("CARGO_BIN_EXE_roost")).replace(
                "/usr/local/libexec/roost/roost-proxy-upgrade",
                deploy("systemd/roost-proxy-upgrade").to_str().unwrap(),
            );
            let to = dir.join(p.file_name().unwrap());
            std::fs::write(&to, t).unwrap();
            units.push(to);
        }
    }
    units.sort();
    units
}

#[test]
fn systemd_accepts_the_units_and_the_sysusers_and_tmpfiles_files() {
    let dir = tempfile::tempdir().unwrap();
    let units = units_in(dir.path());
    let names: Vec<String> = units.iter().map(|u| u.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for want in [
        "roost-admin.service",
        "roost-bgp.service",
        "roost-feeds.service",
        "roost-flows.service",
        "roost-proxy.service",
        "roost-score@.service",
        "roost-tail.service",
        "roost-up.service",
    ] {
        assert!(names.iter().any(|n| n == want), "no deploy/systemd/{want}: {names:?}");
    }
    let mut args = vec!["verify", "--man=no"];
    args.extend(units.iter().map(|u| u.to_str().unwrap()));
    let out = run("/usr/bin/systemd-analyze", &args, "Debian package systemd");
    // verify exits 0 on unknown keys and bad values too: it must say nothing at all
    assert!(out.status.success() && text(&out).trim().is_empty(), "systemd-analyze verify: {}", text(&out));
    for u in &units {
        let t = read(u);
        for key in ["NoNewPrivileges=yes", "ProtectSystem=strict", "User=roost", "Restart=", "CapabilityBoundingSet="] {
            assert!(t.contains(key), "{} lacks {key}", u.display());
        }
    }

    // the user, then its directories, in a root of their own
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    for f in ["passwd", "group"] {
        std::fs::copy(Path::new("/etc").join(f), root.path().join("etc").join(f)).unwrap();
    }
    let r = format!("--root={}", root.path().display());
    let sysusers = deploy("systemd/roost.sysusers.conf");
    let out = run("/usr/bin/systemd-sysusers", &[r.as_str(), sysusers.to_str().unwrap()], "Debian package systemd");
    assert!(out.status.success(), "systemd-sysusers: {}", text(&out));
    assert!(read(&root.path().join("etc/passwd")).lines().any(|l| l.starts_with("roost:")), "no user roost");
    let tmpfiles = deploy("systemd/roost.tmpfiles.conf");
    let out = run(
        "/usr/bin/systemd-tmpfiles",
        &[r.as_str(), "--create", tmpfiles.to_str().unwrap()],
        "Debian package systemd",
    );
    assert!(out.status.success(), "systemd-tmpfiles: {}", text(&out));
    for d in ["var/lib/roost", "var/lib/roost/feeds", "run/roost", "var/log/roost"] {
        assert!(root.path().join(d).is_dir(), "systemd-tmpfiles made no /{d}");
    }
    let out = run("/bin/sh", &["-n", deploy("systemd/roost-proxy-upgrade").to_str().unwrap()], "sh");
    assert!(out.status.success(), "sh -n roost-proxy-upgrade: {}", text(&out));
}

/// A child process killed (and reaped) when dropped.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills a process by PID when dropped (the new proxy is the reload script's child, not ours).
struct KillPid(Option<u32>);

impl Drop for KillPid {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.contains(") Z "),
        Err(_) => true,
    }
}

/// What `systemctl reload roost-proxy` runs, without systemd: the script starts the new proxy,
/// SIGQUITs the one named by MAINPID, and writes the new one's PID where PIDFile= reads it.
#[test]
fn the_proxy_reload_script_hands_the_listeners_to_a_new_process() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let (port, metrics) = (free_port(), free_port());
    let cfg = dir.path().join("roost.toml");
    std::fs::write(
        &cfg,
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:{port}\"]\nupstreams = [\"127.0.0.1:{up}\"]\nmetrics_listen = \"127.0.0.1:{metrics}\"\n\
             threads = 1\ngrace_period = \"1s\"\nshutdown_timeout = \"2s\"\n",
            up = free_port()
        ),
    )
    .unwrap();
    let (sock, pidfile) = (format!("{d}/proxy-upgrade.sock"), dir.path().join("proxy.pid"));
    let mut old = Command::new(env!("CARGO_BIN_EXE_roost"));
    old.arg("--config").arg(&cfg).arg("proxy").env("ROOST_PROXY__UPGRADE_SOCK", &sock).env("ROOST_LOG", "info");
    let mut old = Proc::spawn("proxy-old", old);
    let old_pid = old.pid();
    wait_for(Duration::from_secs(15), "the proxy to serve", || {
        http_get(metrics, "/healthz").is_some_and(|b| b == "ok\n")
    });

    // to a file: the new proxy inherits the script's output and would block on a full pipe
    let script_log = dir.path().join("upgrade.log");
    let log_file = std::fs::File::create(&script_log).unwrap();
    let mut script = Command::new("/bin/sh")
        .arg(deploy("systemd/roost-proxy-upgrade"))
        .env("MAINPID", old_pid.to_string())
        .env("ROOST_BIN", env!("CARGO_BIN_EXE_roost"))
        .env("ROOST_CONFIG", &cfg)
        .env("ROOST_PROXY__UPGRADE_SOCK", &sock)
        .env("ROOST_PROXY__PID_FILE", &pidfile)
        .env("ROOST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = script.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the reload script did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = script.wait();
    let new_pid: Option<u32> = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.trim().parse().ok());
    let _new = KillPid(new_pid);
    let said = std::fs::read_to_string(&script_log).unwrap_or_default();
    eprintln!("{said}");
    assert!(status.success(), "roost-proxy-upgrade failed ({status}): {said}");
    assert!(said.contains("took over from"), "{said}");
    let new_pid = new_pid.expect("the script wrote the new PID");
    assert_ne!(new_pid, old_pid);
    wait_for(Duration::from_secs(20), "the old proxy to exit", || !old.running() || gone(old_pid));
    assert!(!gone(new_pid), "the new proxy serves on");
    assert_eq!(http_get(metrics, "/healthz").as_deref(), Some("ok\n"), "the new proxy has the metrics listener");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok(), "the new proxy has the traffic listener");
}

// ---------------------------------------------------------------------------------------------
// The compose file, the Kubernetes manifests and the Dockerfile, each against what reads it

/// docker-compose (Debian's, 1.29) validates the compose file against the Compose schema and
/// resolves it, with and without the `bgp` profile; yamllint finds no syntax errors (duplicate
/// keys, bad indentation) there or in the Kubernetes manifests.
#[test]
fn docker_compose_and_yamllint_accept_the_compose_file_and_manifests() {
    let compose = deploy("docker-compose.yml");
    for profile in [&[][..], &["--profile", "bgp"][..]] {
        let mut args = vec!["-f", compose.to_str().unwrap()];
        args.extend_from_slice(profile);
        args.extend_from_slice(&["config", "-q"]);
        let out = run("docker-compose", &args, "docker-compose");
        assert!(out.status.success(), "docker-compose {profile:?} config: {}", text(&out));
    }
    // the check can fail: a service with an unknown key is refused
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("docker-compose.yml");
    std::fs::write(
        &broken,
        read(&compose).replacen("  redis:\n    image:", "  redis:\n    restrat: always\n    image:", 1),
    )
    .unwrap();
    let out = run("docker-compose", &["-f", broken.to_str().unwrap(), "config", "-q"], "docker-compose");
    assert!(!out.status.success() && text(&out).contains("restrat"), "{}", text(&out));

    let mut files = vec![compose.to_str().unwrap().to_owned()];
    for e in std::fs::read_dir(deploy("k8s")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            files.push(p.to_str().unwrap().to_owned());
        }
    }
    let mut args = vec!["-d", "{extends: relaxed, rules: {line-length: disable}}", "-f", "parsable"];
    args.extend(files.iter().map(String::as_str));
    let out = run("yamllint", &args, "yamllint");
    assert!(out.status.success() && !text(&out).contains("[error]"), "yamllint: {}", text(&out));
}

fn yaml_docs(p: &Path) -> Vec<serde_yaml::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(&read(p))
        .map(|d| serde_yaml::Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn s<'a>(v: &'a serde_yaml::Value, path: &str) -> Option<&'a str> {
    path.split('.').try_fold(v, |v, k| v.get(k)).and_then(|v| v.as_str())
}

fn list<'a>(v: &'a serde_yaml::Value, path: &str) -> Vec<&'a serde_yaml::Value> {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(|v| v.as_sequence())
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

/// What kubeconform would say of the manifests where it matters here, plus what only this
/// repository knows: every object is a kind at its API version, in a namespace the kustomization
/// creates; workloads' selectors match their pods; every container runs `roost` with the
/// mounted config and a real subcommand, as the image's non-root user; probes and Services name
/// declared ports; volumes, ConfigMaps and Secrets referred to exist; the metrics ports are
/// where roost.toml listens.
#[test]
fn the_kubernetes_manifests_hang_together_with_each_other_and_roost_toml() {
    let kust = &yaml_docs(&deploy("k8s/kustomization.yaml"))[0];
    let mut objects = Vec::new();
    for r in list(kust, "resources") {
        objects.extend(yaml_docs(&deploy(&format!("k8s/{}", r.as_str().unwrap()))));
    }
    let secrets = yaml_docs(&deploy("k8s/secret.example.yaml"));
    let version = |kind: &str| match kind {
        "Namespace" | "Service" | "ConfigMap" | "Secret" | "ServiceAccount" => "v1",
        "Deployment" | "DaemonSet" | "StatefulSet" => "apps/v1",
        "PodDisruptionBudget" => "policy/v1",
        "NetworkPolicy" => "networking.k8s.io/v1",
        other => panic!("a kind this check does not know: {other}"),
    };
    let namespaces: Vec<&str> =
        objects.iter().filter(|o| s(o, "kind") == Some("Namespace")).filter_map(|o| s(o, "metadata.name")).collect();
    let config_maps: Vec<(&str, &str)> = list(kust, "configMapGenerator")
        .into_iter()
        .map(|g| (s(g, "namespace").unwrap(), s(g, "name").unwrap()))
        .collect();
    let secret_names: Vec<(&str, &str)> =
        secrets.iter().map(|o| (s(o, "metadata.namespace").unwrap(), s(o, "metadata.name").unwrap())).collect();
    let roost_toml = read(&deploy("k8s/roost.toml"));
    let subcommands = ["tail", "score", "feeds", "proxy", "bgp", "flows", "admin", "up"];
    let mut workloads = 0;
    for o in objects.iter().chain(&secrets) {
        let kind = s(o, "kind").expect("a kind");
        let name = s(o, "metadata.name").expect("a name");
        assert_eq!(s(o, "apiVersion"), Some(version(kind)), "{kind} {name}");
        if kind != "Namespace" {
            let ns = s(o, "metadata.namespace").unwrap_or_else(|| panic!("{kind} {name} has no namespace"));
            assert!(namespaces.contains(&ns), "{kind} {name}: namespace {ns} is not created");
        }
    }
    for o in &objects {
        let (kind, name) = (s(o, "kind").unwrap(), s(o, "metadata.name").unwrap());
        let ns = s(o, "metadata.namespace").unwrap_or_default();
        if matches!(kind, "Deployment" | "DaemonSet" | "StatefulSet") {
            workloads += 1;
            let pod = &o["spec"]["template"];
            let labels = &pod["metadata"]["labels"];
            let selector = o["spec"]["selector"]["matchLabels"].as_mapping().expect("a selector");
            for (k, v) in selector {
                assert_eq!(labels.get(k), Some(v), "{name}: selector {k:?} does not match the pod's labels");
            }
            assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"].as_bool(), Some(true), "{name}");
            assert_eq!(pod["spec"]["securityContext"]["runAsUser"].as_u64(), Some(10001), "{name}: the image's user");
            let volumes: Vec<&str> = list(pod, "spec.volumes").into_iter().filter_map(|v| s(v, "name")).collect();
            for v in list(pod, "spec.volumes") {
                if let Some(cm) = s(v, "configMap.name") {
                    assert!(config_maps.contains(&(ns, cm)), "{name}: ConfigMap {ns}/{cm} is not generated");
                }
                if let Some(sec) = s(v, "secret.secretName") {
                    assert!(
                        secret_names.contains(&(ns, sec)),
                        "{name}: Secret {ns}/{sec} is not in secret.example.yaml"
                    );
                }
            }
            let containers = list(pod, "spec.containers");
            assert!(!containers.is_empty(), "{name}: no containers (a missing list must not pass)");
            for c in containers {
                let cname = s(c, "name").unwrap();
                assert_eq!(s(c, "image"), Some("roost"), "{name}/{cname}: the image kustomize rewrites");
                let args: Vec<&str> = list(c, "args").into_iter().filter_map(|a| a.as_str()).collect();
                assert_eq!(&args[..2], ["--config", "/etc/roost/roost.toml"], "{name}/{cname}: {args:?}");
                assert!(subcommands.contains(&args[2]), "{name}/{cname}: {args:?}");
                let mounts: Vec<&serde_yaml::Value> = list(c, "volumeMounts");
                assert!(
                    mounts
                        .iter()
                        .any(|m| s(m, "mountPath").is_some_and(|p| p == "/etc/roost" || p == "/etc/roost/roost.toml")),
                    "{name}/{cname}: roost.toml is not mounted"
                );
                for m in &mounts {
                    let v = s(m, "name").unwrap();
                    assert!(volumes.contains(&v), "{name}/{cname}: volume {v} is not declared");
                }
                let ports: Vec<(Option<&str>, u64)> = list(c, "ports")
                    .into_iter()
                    .map(|p| (s(p, "name"), p["containerPort"].as_u64().unwrap()))
                    .collect();
                for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                    let p = &c[probe];
                    let port = if p["httpGet"].is_mapping() { &p["httpGet"]["port"] } else { &p["tcpSocket"]["port"] };
                    if port.is_null() {
                        continue;
                    }
                    assert!(
                        ports.iter().any(|(n, num)| port.as_str() == *n && n.is_some() || port.as_u64() == Some(*num)),
                        "{name}/{cname}: {probe} names port {port:?}, not one of {ports:?}"
                    );
                }
                for (n, num) in &ports {
                    if *n == Some("metrics") {
                        assert!(
                            roost_toml.contains(&format!(":{num}\"")),
                            "{name}/{cname}: nothing in roost.toml listens on {num}"
                        );
                    }
                }
                for e in list(c, "env") {
                    if let Some(sec) = s(e, "valueFrom.secretKeyRef.name") {
                        assert!(
                            secret_names.contains(&(ns, sec)),
                            "{name}/{cname}: Secret {ns}/{sec} is not in secret.example.yaml"
                        );
                    }
                }
            }
        }
        if kind == "Service" || kind == "PodDisruptionBudget" {
            let selector =
                if kind == "Service" { &o["spec"]["selector"] } else { &o["spec"]["selector"]["matchLabels"] };
            let target = objects.iter().find(|w| {
                matches!(s(w, "kind"), Some("Deployment" | "DaemonSet" | "StatefulSet"))
                    && s(w, "metadata.namespace").unwrap_or_default() == ns
                    && selector
                        .as_mapping()
                        .unwrap()
                        .iter()
                        .all(|(k, v)| w["spec"]["template"]["metadata"]["labels"].get(k) == Some(v))
            });
            let target = target.unwrap_or_else(|| panic!("{kind} {name} selects no workload"));
            if kind == "Service" {
                let declared: Vec<&serde_yaml::Value> = list(&target["spec"]["template"], "spec.containers")
                    .into_iter()
                    .flat_map(|c| list(c, "ports"))
                    .collect();
                for p in list(o, "spec.ports") {
                    let t = &p["targetPort"];
                    assert!(
                        declared.iter().any(|d| d["name"] == *t || d["containerPort"] == *t),
                        "Service {name}: targetPort {t:?} is not a container port"
                    );
                }
            }
        }
    }
    assert!(workloads >= 5, "only {workloads} workloads found");
}

/// The image's Dockerfile against what it builds and runs: everything it copies from the
/// context exists and is not ignored; the runtime stage gets the binary the build stage
/// installs; the shared libraries the roost binary needs are in the runtime stage (the slim
/// base's or a package it installs); it runs as the uid the manifests expect; every port
/// deploy/docker/roost.toml listens on is exposed.
#[test]
fn the_dockerfile_copies_what_exists_and_runs_what_it_built() {
    let file = read(&deploy("docker/Dockerfile"));
    let ignore = read(&deploy("docker/Dockerfile.dockerignore"));
    let ignored: Vec<&str> = ignore.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).collect();
    // join continuation lines
    let joined = file.replace("\\\n", " ");
    let lines: Vec<&str> = joined.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let stages: Vec<&str> = lines.iter().filter(|l| l.starts_with("FROM ")).copied().collect();
    assert_eq!(stages.len(), 2, "{stages:?}");
    assert!(stages[0].ends_with(" AS build") && stages[1].contains("debian:bookworm-slim"), "{stages:?}");
    let runtime_from = lines.iter().position(|l| l.starts_with("FROM ") && l.contains("bookworm-slim")).unwrap();
    let (build, runtime) = lines.split_at(runtime_from);
    assert!(build.iter().any(|l| l.contains("cargo build --release --locked -p roost")), "{build:?}");
    assert!(repo().join("crates/roost/Cargo.toml").is_file() && repo().join("Cargo.lock").is_file());
    for l in &lines {
        let Some(rest) = l.strip_prefix("COPY ") else { continue };
        let parts: Vec<&str> = rest.split_whitespace().collect();
        if parts[0].starts_with("--from=build") {
            let src = parts[1];
            assert!(build.iter().any(|b| b.contains(src)), "COPY --from=build {src}: the build stage makes no {src}");
            continue;
        }
        for src in &parts[..parts.len() - 1] {
            if *src == "." {
                continue;
            }
            assert!(repo().join(src).exists(), "COPY {src}: not in the build context");
            let first = src.split('/').next().unwrap();
            assert!(!ignored.contains(&first), "COPY {src}: excluded by Dockerfile.dockerignore");
        }
    }
    // the packages the runtime stage installs, and what debian:bookworm-slim already has
    let installed: Vec<&str> = runtime
        .iter()
        .filter_map(|l| l.split("--no-install-recommends").nth(1))
        .flat_map(|p| p.split("&&").next().unwrap().split_whitespace())
        .collect();
    let provided_by = |lib: &str| -> Option<&str> {
        let table = [
            ("linux-vdso", "kernel"),
            ("ld-linux", "base"),
            ("libc.so", "base"),
            ("libm.so", "base"),
            ("libgcc_s", "base"),
            ("libstdc++", "base"),
            ("libz.so", "base"),
            ("libssl.so", "libssl3"),
            ("libcrypto.so", "libssl3"),
            ("libcurl", "libcurl4"),
            ("libsasl2", "libsasl2-2"),
        ];
        table.iter().find(|(prefix, _)| lib.starts_with(prefix)).map(|(_, p)| *p)
    };
    let ldd = run("ldd", &[env!("CARGO_BIN_EXE_roost")], "libc-bin");
    assert!(ldd.status.success(), "{}", text(&ldd));
    for lib in String::from_utf8_lossy(&ldd.stdout).lines().filter_map(|l| l.split_whitespace().next()) {
        let lib = lib.rsplit('/').next().unwrap();
        let package =
            provided_by(lib).unwrap_or_else(|| panic!("roost links {lib}: which package has it in the image?"));
        assert!(
            matches!(package, "kernel" | "base") || installed.contains(&package),
            "roost links {lib} ({package}), which the runtime stage does not install ({installed:?})"
        );
    }
    assert!(runtime.contains(&"USER 10001:10001"), "{runtime:?}");
    assert!(runtime.contains(&"ENTRYPOINT [\"/usr/local/bin/roost\"]"), "{runtime:?}");
    let expose = runtime.iter().find(|l| l.starts_with("EXPOSE ")).expect("EXPOSE");
    let exposed = |port: u16, udp: bool| {
        expose.split_whitespace().skip(1).any(|e| {
            let (range, proto) = e.split_once('/').unwrap_or((e, "tcp"));
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            (proto == "udp") == udp && (a.parse::<u16>().unwrap()..=b.parse().unwrap()).contains(&port)
        })
    };
    let config = loads(&deploy("docker/roost.toml"));
    let mut n = 0;
    for l in config.lines() {
        let Some((key, value)) = l.split_once(" = ") else { continue };
        let Some(port) =
            value.trim_matches(['"', '[', ']']).strip_prefix("0.0.0.0:").and_then(|p| p.parse::<u16>().ok())
        else {
            continue;
        };
        let udp = key.trim() == "listen"
            && config[..config.find(l).unwrap()].rfind("\n[").is_some_and(|i| config[i..].starts_with("\n[flows]"));
        assert!(exposed(port, udp), "{key} = {value} is not exposed ({expose})");
        n += 1;
    }
    assert!(n >= 5, "only {n} listening addresses found in deploy/docker/roost.toml");
}
