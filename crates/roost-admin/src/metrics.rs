//! The admin's Prometheus metrics (`roost_admin_*`), at `/metrics` on the admin's listener
//! without signing in: counts only, never a name, address or comment.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: u16,
}

#[derive(Default)]
pub struct AdminMetrics {
    /// Sign-ins by outcome: `ok`, `invalid` (wrong name or password), `limited` (too many
    /// failures), `busy` (the password checks' queue was full).
    pub sign_ins: Family<OutcomeLabels, Counter>,
    /// Passwords checked (argon2 runs).
    pub password_checks: Counter,
    /// Audit-log records read that did not read as entries (kept and shown as `unreadable`).
    pub audit_unreadable: Counter,
    /// Overrides put in force or removed, by action (allow, challenge, block, remove).
    pub overrides: Family<ActionLabels, Counter>,
    /// Responses by status code (401, 403 and 429 are refusals).
    pub responses: Family<CodeLabels, Counter>,
    /// The current verdicts the admin lists.
    pub verdicts: Gauge,
    /// Whole loads of the verdicts (the first, and after the store was reloaded); the rest
    /// are read as changes.
    pub verdict_loads: Counter,
    pub verdict_store_errors: Counter,
}

impl AdminMetrics {
    pub fn registry(&self) -> Registry {
        let mut reg = Registry::default();
        let r = reg.sub_registry_with_prefix("roost_admin");
        r.register("sign_ins", "Sign-ins by outcome (ok, invalid, limited, busy)", self.sign_ins.clone());
        r.register("password_checks", "Passwords checked (argon2 runs)", self.password_checks.clone());
        r.register(
            "audit_unreadable_reads",
            "Audit-log records read that did not read as entries (kept, shown as unreadable)",
            self.audit_unreadable.clone(),
        );
        r.register("overrides", "Overrides by action (allow, challenge, block, remove)", self.overrides.clone());
        r.register("responses", "Responses by status code", self.responses.clone());
        r.register("verdicts", "Current verdicts the admin lists", self.verdicts.clone());
        r.register(
            "verdict_loads",
            "Whole loads of the verdict store (the rest are changes)",
            self.verdict_loads.clone(),
        );
        r.register(
            "verdict_store_errors",
            "Failed reads of the verdict store (lists are refused meanwhile)",
            self.verdict_store_errors.clone(),
        );
        reg
    }
}
