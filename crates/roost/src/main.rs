//! `roost`: the edge reputation and abuse-defense appliance. This binary only wires the
//! library crates together; each subcommand is one role.

/// mimalloc: the proxy and the scorer allocate per request and per event; glibc malloc was a
/// tenth of the proxy's profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cmd;
mod config;
mod crawlers;
mod engine;
mod enrich;
mod flowspec;
mod logs;
mod profiles;
mod ruleset;
mod runtime;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use roost_logformat::{FormatKind, LogFormatConfig};

use crate::cmd::{admin, bgp, feeds, flows, generate, replay, rules, score, tail, up};
use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "roost",
    version,
    about = "Edge reputation and abuse defense: score clients from access logs, explain every verdict."
)]
struct Cli {
    /// Configuration file (TOML). Without one, roost runs on its embedded defaults
    /// (see deploy/roost.toml); ROOST_* environment variables override either.
    #[arg(long, global = true, env = "ROOST_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run access logs through the scorer offline: what would be challenged or blocked, and why.
    Replay {
        /// Log files (plain or .gz; `-` for standard input), replayed in the order given.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Log format; `auto` guesses from each file's first lines.
        #[arg(long, value_enum)]
        format: Option<FormatArg>,
        /// A custom nginx `log_format` directive (implies --format nginx).
        #[arg(long)]
        log_format: Option<String>,
        /// Every line is inside a syslog frame (RFC 3164 or 5424) around --format (`auto` finds
        /// frames by itself).
        #[arg(long)]
        syslog: bool,
        /// Write one JSON object per client (ip, verdict, reputation, requests, reasons, …).
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Write every verdict change as a JSON line, in the order they happened.
        #[arg(long)]
        changes: Option<PathBuf>,
        /// Score without the known-bad rules (status codes and behaviour signals only).
        #[arg(long)]
        no_rules: bool,
        /// Use the rule files in this directory instead of `rules.dir` or the built-in rules.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Also score with this feed file: NAME=PATH, NAME one of `roost feeds list` (repeatable;
        /// adds to `feeds.files`).
        #[arg(long = "feed", value_name = "NAME=PATH", value_parser = cmd::feeds::parse_feed_arg)]
        feed: Vec<(String, PathBuf)>,
        /// Backtest: also run the same lines through this configuration file (its engine, rules,
        /// feeds and geo policy) and report the clients whose verdict differs, with both reasons.
        #[arg(long, value_name = "OTHER.toml")]
        compare: Option<PathBuf>,
    },
    /// Threat feeds: fetch and publish them, check a file, see which feeds list an address.
    Feeds {
        #[command(subcommand)]
        cmd: FeedsCmd,
    },
    /// Check the known-bad behaviour rules: lint, run their examples, list them.
    Rules {
        #[command(subcommand)]
        cmd: RulesCmd,
    },
    /// Write a synthetic access log with known attackers and its ground truth.
    Generate {
        /// The log to write.
        #[arg(long, short)]
        out: PathBuf,
        /// Write `subject<TAB>role` lines here.
        #[arg(long)]
        truth: Option<PathBuf>,
        /// About this many lines over an hour (default: the 30-minute golden scenario).
        #[arg(long)]
        lines: Option<u64>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = GenFormat::Combined)]
        format: GenFormat,
    },
    /// The appliance in one process: follow the configured access logs, score, keep verdicts in
    /// memory, serve the JSON API and /metrics. Runs on embedded defaults without a config file.
    Up {
        /// Also replay a bundled 30-minute attack scenario (in about a minute) so verdicts show.
        #[arg(long)]
        demo: bool,
        /// Override `up.listen`.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Follow the configured access logs and publish them to Kafka, parsed at the edge
    /// (at-least-once: positions are checkpointed after Kafka acknowledged).
    Tail,
    /// Score the requests topic as one member of the scorer group; verdicts to Redis and the
    /// verdicts topic, offsets committed after.
    Score,
    /// Collect NetFlow v5/v9 and IPFIX from routers and publish the flow records to Kafka.
    Flows,
    /// The flowspec controller: announce BGP flowspec rules that divert flagged clients to the
    /// proxy, withdraw them when verdicts end.
    Bgp {
        #[command(subcommand)]
        cmd: Option<BgpCmd>,
    },
    /// The admin UI and JSON API: every verdict and why, overrides, the audit log.
    Admin {
        #[command(subcommand)]
        cmd: Option<AdminCmd>,
    },
    /// Waffles: the reverse proxy that sends each request to the app, a challenge or an error
    /// page by its client's verdict (pingora; verdicts followed from Redis).
    Proxy {
        /// Take the listeners over from the running proxy (graceful restart: start the new one
        /// with --upgrade, then send the old one SIGQUIT).
        #[arg(long)]
        upgrade: bool,
        /// Fork into the background once the configuration is checked; the PID goes to
        /// proxy.pid_file, logs to the stderr the proxy was started with.
        #[arg(long)]
        daemon: bool,
    },
    /// Print the effective configuration (defaults, file and environment merged) as TOML.
    Config,
}

#[derive(Subcommand)]
enum FeedsCmd {
    /// Fetch every enabled feed on its schedule; validate; publish changes to the feeds topic
    /// (`kafka.brokers`) and/or snapshots to `feeds.cache_dir`. Serves /metrics on `feeds.listen`.
    Run {
        /// Fetch each feed once and exit (non-zero if any fetch failed or was refused).
        #[arg(long)]
        once: bool,
        /// Only these feeds (repeatable).
        #[arg(long)]
        only: Vec<String>,
    },
    /// The feed definitions: name, on/off, format, schedule, effect, source.
    List,
    /// Parse and validate a file as feed NAME: counts, bad lines, what would be published.
    Check { name: String, file: PathBuf },
    /// Which feeds list an address, and since when.
    Lookup {
        ip: std::net::IpAddr,
        /// A feed file NAME=PATH to consult besides the configured ones (repeatable).
        #[arg(long = "feed", value_name = "NAME=PATH", value_parser = cmd::feeds::parse_feed_arg)]
        feed: Vec<(String, PathBuf)>,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Read a password on standard input and print its argon2 hash for the users file.
    HashPassword,
}

#[derive(Subcommand)]
enum BgpCmd {
    /// The running controller's rules, with the verdict and reasons behind each.
    Show,
}

#[derive(Subcommand)]
enum RulesCmd {
    /// Validate rule files: syntax, unknown fields, bad regexes, duplicate ids (file:line).
    Lint {
        /// A directory of rule files (default: `rules.dir`, else the built-in rules).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run every rule's examples: requests that must and must not match.
    Test {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// List the rules: id, severity, category, effect, title.
    List {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Auto,
    Combined,
    Common,
    Json,
    Haproxy,
    Nginx,
    /// nginx's error log
    NginxError,
    /// Apache's error log
    ApacheError,
}

#[derive(Clone, Copy, ValueEnum)]
enum GenFormat {
    Combined,
    Timed,
    Json,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("ROOST_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("roost: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load(cli.config.as_deref())?;
    match cli.cmd {
        Command::Replay {
            files,
            format,
            log_format,
            syslog,
            output,
            changes,
            no_rules,
            rules: rules_dir,
            feed,
            compare,
        } => {
            let mut fmt: LogFormatConfig = cfg.logs.first().map(|l| l.format.clone()).unwrap_or_default();
            if let Some(f) = format {
                fmt.format = match f {
                    FormatArg::Auto => FormatKind::Auto,
                    FormatArg::Combined => FormatKind::Combined,
                    FormatArg::Common => FormatKind::Common,
                    FormatArg::Json => FormatKind::Json,
                    FormatArg::Haproxy => FormatKind::Haproxy,
                    FormatArg::Nginx => FormatKind::Nginx,
                    FormatArg::NginxError => FormatKind::NginxError,
                    FormatArg::ApacheError => FormatKind::ApacheError,
                };
            }
            if let Some(def) = log_format {
                fmt.format = FormatKind::Nginx;
                fmt.log_format = Some(def);
            }
            fmt.syslog |= syslog;
            let engine = replay::builder(&cfg, &feed, no_rules, rules_dir.as_deref())?;
            let compare = match compare {
                Some(path) => {
                    let other = Config::load(Some(&path))?;
                    // the same rule directory and feed files, unless the other file names its own
                    let dir = rules_dir.as_deref().filter(|_| other.rules.dir.is_empty());
                    Some((path.display().to_string(), replay::builder(&other, &feed, no_rules, dir)?))
                }
                None => None,
            };
            let args = replay::ReplayArgs { files, format: fmt, output, changes, engine, compare };
            let summary = replay::run(args)?;
            summary.print(&mut std::io::stdout().lock())?;
        }
        Command::Generate { out, truth, lines, seed, format } => {
            let format = match format {
                GenFormat::Combined => roost_loggen::Format::Combined,
                GenFormat::Timed => roost_loggen::Format::Timed,
                GenFormat::Json => roost_loggen::Format::Json,
            };
            let n = generate::run(&generate::GenerateArgs { out: out.clone(), truth, lines, seed, format })?;
            eprintln!("roost generate: {n} lines to {}", out.display());
            if matches!(format, roost_loggen::Format::Timed) {
                eprintln!("  its nginx log_format: {}", roost_loggen::TIMED_LOG_FORMAT);
            }
        }
        Command::Feeds { cmd } => match cmd {
            FeedsCmd::Run { once, only } => {
                if !feeds::run(cfg, feeds::RunArgs { once, only })? {
                    anyhow::bail!("some feeds were not refreshed (see above)");
                }
            }
            FeedsCmd::List => print!("{}", feeds::list(&cfg.feeds)?),
            FeedsCmd::Check { name, file } => print!("{}", feeds::check(&cfg, &name, &file)?),
            FeedsCmd::Lookup { ip, feed } => print!("{}", feeds::lookup(&cfg, ip, &feed)?),
        },
        Command::Up { demo, listen } => up::run(cfg, up::UpArgs { demo, listen })?,
        Command::Tail => tail::run(cfg)?,
        Command::Score => score::run(cfg)?,
        Command::Flows => flows::run(cfg)?,
        Command::Admin { cmd: Some(AdminCmd::HashPassword) } => admin::hash_password()?,
        Command::Admin { cmd: None } => admin::run(cfg)?,
        Command::Bgp { cmd: None } => bgp::run(cfg)?,
        Command::Bgp { cmd: Some(BgpCmd::Show) } => print!("{}", bgp::show(&cfg)?),
        // pingora's server: SIGTERM stops it gracefully, SIGINT at once, SIGQUIT hands over
        Command::Proxy { upgrade, daemon } => {
            roost_proxy::run(cfg.proxy, cfg.redis, cfg.engine.ipv6_prefix, roost_proxy::RunOptions { upgrade, daemon })?
        }
        Command::Rules { cmd } => {
            let out = match cmd {
                RulesCmd::Lint { dir } => rules::lint(&cfg.rules, dir.as_deref())?,
                RulesCmd::Test { dir } => rules::test(&cfg.rules, &cfg.engine, dir.as_deref())?,
                RulesCmd::List { dir } => rules::list(&cfg.rules, dir.as_deref())?,
            };
            print!("{out}");
            if !out.ends_with('\n') {
                println!();
            }
        }
        Command::Config => {
            let text = toml::to_string_pretty(&cfg).context("rendering the configuration")?;
            std::io::stdout().write_all(text.as_bytes())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod layout {
    //! The binary's module graph, read off its sources: no cycle, and no subcommand module
    //! depending on another (the shared wiring is `config`, `runtime`, `engine`, `ruleset`,
    //! `enrich`, `flowspec`).

    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Every `crate::a::b` path in a file, as the module it names (`a`, or `cmd::b`).
    fn uses(text: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut rest = text;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let word = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
            let first = word(rest);
            if first == "cmd" {
                let after = &rest["cmd".len()..];
                if let Some(x) = after.strip_prefix("::{") {
                    for m in x.split('}').next().unwrap_or("").split(',') {
                        out.insert(format!("cmd::{}", word(m.trim())));
                    }
                } else if let Some(x) = after.strip_prefix("::") {
                    out.insert(format!("cmd::{}", word(x)));
                } else {
                    out.insert("cmd".to_owned());
                }
            } else if !first.is_empty() {
                out.insert(first);
            }
        }
        out
    }

    /// Module name → the modules it uses, for every file under `src/` (a directory module's files
    /// count as the module).
    fn graph() -> BTreeMap<String, BTreeSet<String>> {
        fn walk(dir: &Path, module: Option<String>, g: &mut BTreeMap<String, BTreeSet<String>>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                let stem = p.file_stem().unwrap().to_string_lossy().into_owned();
                if p.is_dir() {
                    let m = match &module {
                        Some(m) if m == "cmd" => format!("cmd::{stem}"),
                        Some(m) => m.clone(),
                        None => stem.clone(),
                    };
                    walk(&p, Some(m), g);
                    continue;
                }
                let m = match (&module, stem.as_str()) {
                    (None, "main") => "main".to_owned(),
                    (None, _) => stem,
                    (Some(m), "mod") => m.clone(),
                    (Some(m), _) if m == "cmd" => format!("cmd::{stem}"),
                    (Some(m), _) => m.clone(),
                };
                let text = std::fs::read_to_string(&p).unwrap();
                // a test module may name anything; the tests below are in main.rs's
                let text = text.split("#[cfg(test)]").next().unwrap();
                // comments name modules without using them
                let code: String =
                    text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
                let used = uses(&code);
                g.entry(m.clone()).or_default().extend(used.into_iter().filter(|u| *u != m));
            }
        }
        let mut g = BTreeMap::new();
        walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), None, &mut g);
        g
    }

    /// What is wrong with a module graph: a subcommand that uses another, a shared module that
    /// uses a subcommand, a cycle.
    fn check(g: &BTreeMap<String, BTreeSet<String>>) -> Result<(), String> {
        for (m, used) in g {
            if m.starts_with("cmd::") {
                let others: Vec<&String> = used.iter().filter(|u| u.starts_with("cmd")).collect();
                if !others.is_empty() {
                    return Err(format!("subcommand {m} uses {others:?}"));
                }
            } else if m != "main" && m != "cmd" && used.iter().any(|u| u.starts_with("cmd")) {
                return Err(format!("shared module {m} uses a subcommand: {used:?}"));
            }
        }
        // no cycle: depth-first, a module on the current path must not be reached again
        fn visit<'a>(
            m: &'a str,
            g: &'a BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) -> Result<(), String> {
            if done.contains(m) {
                return Ok(());
            }
            if path.contains(&m) {
                return Err(format!("import cycle: {} -> {m}", path.join(" -> ")));
            }
            path.push(m);
            for u in g.get(m).into_iter().flatten() {
                visit(u, g, path, done)?;
            }
            path.pop();
            done.insert(m);
            Ok(())
        }
        let mut done = BTreeSet::new();
        for m in g.keys() {
            visit(m, g, &mut Vec::new(), &mut done)?;
        }
        Ok(())
    }

    #[test]
    fn no_subcommand_uses_another_and_the_modules_form_no_cycle() {
        let g = graph();
        for m in ["config", "runtime", "engine", "ruleset", "enrich", "flowspec", "cmd::up", "cmd::bgp", "cmd::replay"]
        {
            assert!(g.contains_key(m), "no module {m} found: {:?}", g.keys());
        }
        assert!(g["cmd::up"].contains("flowspec") && g["cmd::score"].contains("engine"), "{g:?}");
        check(&g).unwrap();
    }

    /// The check can fail: imports in every spelling are seen, and so are a cycle, a subcommand
    /// using another and a shared module using a subcommand.
    #[test]
    fn the_layout_check_sees_what_it_forbids() {
        assert_eq!(
            uses("use crate::cmd::{bgp, up};\nuse crate::runtime::wall_now; crate::cmd::tail::run"),
            ["cmd::bgp", "cmd::tail", "cmd::up", "runtime"].into_iter().map(String::from).collect()
        );
        let graph = |edges: &[(&str, &str)]| {
            let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (a, b) in edges {
                g.entry((*a).into()).or_default().insert((*b).into());
            }
            g
        };
        assert!(check(&graph(&[("cmd::up", "engine"), ("engine", "config")])).is_ok());
        assert!(check(&graph(&[("engine", "enrich"), ("enrich", "engine")])).unwrap_err().contains("cycle"));
        assert!(check(&graph(&[("cmd::up", "cmd::bgp")])).unwrap_err().contains("subcommand cmd::up uses"));
        assert!(check(&graph(&[("runtime", "cmd::up")])).unwrap_err().contains("shared module runtime"));
    }
}
