//! `roost admin`: the admin UI and JSON API on their own, over the verdicts in Redis and the
//! audit and overrides topics in Kafka (`roost_admin::Distributed`); `roost admin hash-password`.

use std::sync::Arc;

use crate::config::Config;
use crate::enrich;
use crate::runtime::{self, Shutdown};

pub fn run(cfg: Config) -> anyhow::Result<()> {
    let rt = runtime::tokio(2)?;
    let shutdown = Shutdown::on_signals(&rt)?;
    let listener = rt.block_on(runtime::bind(cfg.admin.listen))?;
    let backend = roost_admin::Distributed::connect(&cfg.redis, cfg.kafka.clone(), rt.handle().clone())?;
    let users = roost_admin::auth::load_users(&cfg.admin.users_file)?;
    let secret = roost_admin::read_secret(&cfg.proxy.challenge.secret_file)?;
    let geo = enrich::open_geo(&cfg.geo)?;
    let st = roost_admin::state(cfg.admin.clone(), users, Arc::new(backend), secret, geo)?;
    let s = shutdown.clone();
    rt.block_on(roost_admin::serve(listener, st, async move { s.stopped().await }))?;
    Ok(())
}

/// Reads a password on standard input and prints its argon2 hash for the users file.
pub fn hash_password() -> anyhow::Result<()> {
    let mut pw = String::new();
    std::io::stdin().read_line(&mut pw)?;
    let pw = pw.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!pw.is_empty(), "no password on standard input");
    println!("{}", roost_admin::auth::hash_password(pw));
    Ok(())
}
