//! Who may do what: users with roles and argon2 password hashes (a TOML file), server-side
//! sessions behind a random cookie, a CSRF token per session, API tokens for automation (only
//! their SHA-256 is configured), and a login rate limit per client address and per user name.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees everything, changes nothing.
    Viewer,
    /// Also sets and removes overrides.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// One user of the users file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    pub role: Role,
    /// An argon2 PHC string (`roost admin hash-password` prints one).
    pub password_hash: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default, rename = "user")]
    users: Vec<User>,
}

/// An API token: its name, role and the hex SHA-256 of the token (the token itself is never
/// stored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub name: String,
    pub role: Role,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: {1}")]
    Parse(String, toml::de::Error),
    #[error("user {0}: the password hash is not an argon2 PHC string")]
    Hash(String),
}

/// Reads the users file: `[[user]] name = "…" role = "operator" password_hash = "$argon2id$…"`.
pub fn load_users(path: &Path) -> Result<Vec<User>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Read(path.display().to_string(), e))?;
    let f: UsersFile = toml::from_str(&text).map_err(|e| Error::Parse(path.display().to_string(), e))?;
    for u in &f.users {
        PasswordHash::new(&u.password_hash).map_err(|_| Error::Hash(u.name.clone()))?;
    }
    Ok(f.users)
}

/// An argon2id PHC string for `password`, with a random salt.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default().hash_password(password.as_bytes(), &salt).expect("argon2 hashes").to_string()
}

/// Hex SHA-256, as API tokens are configured.
pub fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A random token: 32 bytes, hex.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Equal without telling how much is equal.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Someone signed in (or an API token).
#[derive(Clone, Debug)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// The session's CSRF token; `None` for API tokens (no ambient authority to forge).
    pub csrf: Option<String>,
}

struct Session {
    principal: Principal,
    expires: Instant,
}

/// How sign-in attempts are limited (`[admin.sign_in]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SignInConfig {
    /// Failed attempts on one user name from one address within `window`, then that pair waits
    /// out the window. Counted before the password is checked, so concurrent guesses cannot
    /// pass the limit together.
    pub max_failures: u32,
    /// Failed attempts from one address within `window`, whatever the name (higher: colleagues
    /// behind one NAT should not lock each other out).
    pub max_failures_per_address: u32,
    /// Failed attempts on one user name from anywhere within `window`, then attempts on that
    /// name are slowed to one a second (never locked: a stranger cannot lock an operator out).
    pub max_failures_per_user: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Password checks (argon2, about 19 MiB each) at once, at most.
    pub hash_workers: usize,
    /// Sign-ins waiting for a password check, at most; more are answered 429 at once.
    pub hash_queue: usize,
}

impl Default for SignInConfig {
    fn default() -> Self {
        SignInConfig {
            max_failures: 5,
            max_failures_per_address: 20,
            max_failures_per_user: 100,
            window: Duration::from_secs(15 * 60),
            hash_workers: 2,
            hash_queue: 8,
        }
    }
}

/// Attempts on one name are this far apart at least, once it is being guessed at from many
/// addresses.
const SLOWED_SPACING: Duration = Duration::from_secs(1);

struct Failures {
    n: u32,
    since: Instant,
    last: Instant,
}

/// Users, sessions, tokens and the sign-in limiter.
pub struct Auth {
    users: HashMap<String, User>,
    tokens: HashMap<String, Token>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, Failures>>,
    session_ttl: Duration,
    limits: SignInConfig,
    /// Verified against when the user does not exist, so both cases take as long.
    dummy_hash: String,
    /// Password hashes checked (argon2 runs): `roost_admin_password_checks_total`.
    checks: prometheus_client::metrics::counter::Counter,
}

/// Why a login was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginError {
    Invalid,
    /// Too many failures; try again after this long.
    Limited(Duration),
}

/// A sign-in attempt counted as failed before its password is checked ([`Auth::reserve`]);
/// [`Auth::login`] takes it back if the password is right.
#[derive(Debug)]
pub struct Attempt {
    name: String,
    keys: [String; 3],
}

impl Auth {
    pub fn new(users: Vec<User>, tokens: Vec<Token>, session_ttl: Duration, limits: SignInConfig) -> Auth {
        Auth {
            users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
            tokens: tokens.into_iter().map(|t| (t.sha256.to_ascii_lowercase(), t)).collect(),
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            session_ttl,
            limits,
            dummy_hash: hash_password("not a password anyone has"),
            checks: Default::default(),
        }
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// The count of password hashes checked (shared: the admin's metrics register it).
    pub fn checks(&self) -> prometheus_client::metrics::counter::Counter {
        self.checks.clone()
    }

    /// Counts an attempt on `name` from `from` as failed, at once and atomically, unless a limit
    /// is reached: then how long to wait. A limited attempt never reaches a password check.
    pub fn reserve(&self, name: &str, from: IpAddr) -> Result<Attempt, LoginError> {
        let l = &self.limits;
        let keys = [format!("ip:{from}"), format!("pair:{name}\u{0}{from}"), format!("user:{name}")];
        let mut f = self.failures.lock().expect("failures lock");
        let now = Instant::now();
        f.retain(|_, e| now.duration_since(e.since) < l.window);
        for (k, max) in [(&keys[0], l.max_failures_per_address), (&keys[1], l.max_failures)] {
            if let Some(e) = f.get(k).filter(|e| e.n >= max) {
                return Err(LoginError::Limited(l.window.saturating_sub(now.duration_since(e.since))));
            }
        }
        if let Some(e) = f.get(&keys[2]).filter(|e| e.n >= l.max_failures_per_user) {
            let since_last = now.duration_since(e.last);
            if since_last < SLOWED_SPACING {
                return Err(LoginError::Limited(SLOWED_SPACING - since_last));
            }
        }
        for k in &keys {
            let e = f.entry(k.clone()).or_insert(Failures { n: 0, since: now, last: now });
            e.n += 1;
            e.last = now;
        }
        Ok(Attempt { name: name.to_owned(), keys })
    }

    /// Takes back an attempt that was not made (no password was checked).
    pub fn release(&self, a: Attempt) {
        let mut f = self.failures.lock().expect("failures lock");
        for k in &a.keys {
            if let Some(e) = f.get_mut(k) {
                e.n = e.n.saturating_sub(1);
            }
        }
    }

    /// Checks the password of a reserved attempt; on success takes the attempt back, opens a
    /// session and returns its cookie value. Slow on purpose (argon2): call it off the async
    /// threads, a bounded number at once.
    pub fn login(&self, a: Attempt, password: &str) -> Result<(String, Principal), LoginError> {
        let user = self.users.get(&a.name);
        let hash = user.map_or(self.dummy_hash.as_str(), |u| u.password_hash.as_str());
        self.checks.inc();
        let ok = PasswordHash::new(hash)
            .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
            .unwrap_or(false);
        match user {
            Some(u) if ok => {
                self.release(a);
                let principal = Principal { name: u.name.clone(), role: u.role, csrf: Some(random_token()) };
                let id = random_token();
                self.sessions.lock().expect("sessions lock").insert(
                    sha256_hex(&id),
                    Session { principal: principal.clone(), expires: Instant::now() + self.session_ttl },
                );
                Ok((id, principal))
            }
            _ => Err(LoginError::Invalid),
        }
    }

    /// The session behind a cookie value (sessions are stored by the SHA-256 of it).
    pub fn session(&self, cookie: &str) -> Option<Principal> {
        let mut s = self.sessions.lock().expect("sessions lock");
        let key = sha256_hex(cookie);
        match s.get(&key) {
            Some(sess) if sess.expires > Instant::now() => Some(sess.principal.clone()),
            Some(_) => {
                s.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn logout(&self, cookie: &str) {
        self.sessions.lock().expect("sessions lock").remove(&sha256_hex(cookie));
    }

    /// The principal behind `Authorization: Bearer <token>`.
    pub fn token(&self, bearer: &str) -> Option<Principal> {
        let t = self.tokens.get(&sha256_hex(bearer))?;
        Some(Principal { name: format!("token:{}", t.name), role: t.role, csrf: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        let users =
            vec![User { name: "ana".into(), role: Role::Operator, password_hash: hash_password("correct horse") }];
        let tokens = vec![Token { name: "ci".into(), role: Role::Viewer, sha256: sha256_hex("s3cr3t-token") }];
        Auth::new(users, tokens, Duration::from_secs(3600), SignInConfig::default())
    }

    fn login(a: &Auth, name: &str, password: &str, from: IpAddr) -> Result<(String, Principal), LoginError> {
        a.login(a.reserve(name, from)?, password)
    }

    #[test]
    fn passwords_sessions_and_tokens() {
        let a = auth();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let (cookie, p) = login(&a, "ana", "correct horse", ip).unwrap();
        assert_eq!(p.role, Role::Operator);
        assert!(p.csrf.as_ref().unwrap().len() == 64);
        assert_eq!(a.session(&cookie).unwrap().name, "ana");
        a.logout(&cookie);
        assert!(a.session(&cookie).is_none());
        assert_eq!(login(&a, "ana", "wrong", ip).unwrap_err(), LoginError::Invalid);
        assert_eq!(login(&a, "nobody", "correct horse", ip).unwrap_err(), LoginError::Invalid);
        assert_eq!(a.token("s3cr3t-token").unwrap().role, Role::Viewer);
        assert!(a.token("guess").is_none());
        assert_eq!(a.checks().get(), 3);
    }

    #[test]
    fn failures_lock_the_pair_and_the_address_but_a_stranger_cannot_lock_an_operator_out() {
        let a = auth();
        let stranger: IpAddr = "198.51.100.66".parse().unwrap();
        for _ in 0..5 {
            assert_eq!(login(&a, "ana", "nope", stranger).unwrap_err(), LoginError::Invalid);
        }
        // that address may not try the name again, not even with the right password…
        assert!(matches!(login(&a, "ana", "correct horse", stranger), Err(LoginError::Limited(_))));
        // …but the operator, from their own address, signs in
        assert!(login(&a, "ana", "correct horse", "192.0.2.10".parse().unwrap()).is_ok());
        // an address guessing many names is locked out after 20
        let ip2: IpAddr = "192.0.2.3".parse().unwrap();
        for i in 0..20 {
            assert_eq!(login(&a, &format!("u{i}"), "x", ip2).unwrap_err(), LoginError::Invalid);
        }
        assert!(matches!(login(&a, "u99", "x", ip2), Err(LoginError::Limited(_))));
    }

    #[test]
    fn attempts_are_counted_before_the_check_so_a_burst_cannot_pass_the_limit_together() {
        let a = auth();
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        // 50 attempts reserved at once, none checked yet: only the first 5 get a check
        let reserved: Vec<_> = (0..50).filter_map(|_| a.reserve("ana", ip).ok()).collect();
        assert_eq!(reserved.len(), 5);
        // one not made is given back
        let mut it = reserved.into_iter();
        a.release(it.next().unwrap());
        assert!(a.reserve("ana", ip).is_ok());
        assert!(a.reserve("ana", ip).is_err());
    }

    #[test]
    fn a_name_guessed_from_many_addresses_is_slowed_not_locked() {
        let limits = SignInConfig { max_failures_per_user: 10, ..SignInConfig::default() };
        let a = Auth::new(
            vec![User { name: "ana".into(), role: Role::Operator, password_hash: hash_password("correct horse") }],
            Vec::new(),
            Duration::from_secs(3600),
            limits,
        );
        for i in 0..10u8 {
            let ip = IpAddr::from([203, 0, 113, i]);
            a.release(a.reserve("ana", ip).unwrap()); // counted, then given back: no hashing here
            let _ = a.reserve("ana", ip).unwrap();
        }
        // past 10 failures on the name: one attempt a second, from anywhere
        let op: IpAddr = "192.0.2.10".parse().unwrap();
        assert!(matches!(a.reserve("ana", op), Err(LoginError::Limited(w)) if w <= SLOWED_SPACING));
        std::thread::sleep(SLOWED_SPACING);
        assert!(login(&a, "ana", "correct horse", op).is_ok());
    }

    #[test]
    fn comparisons_are_exact() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }
}
