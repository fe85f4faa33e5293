//! `roost generate`: a synthetic access log with known attackers, and its ground truth.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use roost_loggen::{Format, Scenario, generate, subject, write_line};

pub struct GenerateArgs {
    pub out: PathBuf,
    pub truth: Option<PathBuf>,
    pub lines: Option<u64>,
    pub seed: u64,
    pub format: Format,
}

pub fn run(a: &GenerateArgs) -> anyhow::Result<u64> {
    let scenario = match a.lines {
        Some(n) => Scenario::sized(a.seed, n),
        None => Scenario::golden(a.seed),
    };
    let mut w = BufWriter::with_capacity(
        1 << 20,
        File::create(&a.out).with_context(|| format!("creating {}", a.out.display()))?,
    );
    let mut n = 0u64;
    let truth = generate(&scenario, |r| {
        n += 1;
        write_line(&mut w, r, a.format)
    })?;
    w.flush()?;
    if let Some(t) = &a.truth {
        let mut w = BufWriter::new(File::create(t).with_context(|| format!("creating {}", t.display()))?);
        for (ip, role) in truth {
            writeln!(w, "{}\t{}", subject(ip, 64), role.as_str())?;
        }
        w.flush()?;
    }
    Ok(n)
}
