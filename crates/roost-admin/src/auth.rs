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

/// Users, sessions, tokens and the login limiter.
pub struct Auth {
    users: HashMap<String, User>,
    tokens: HashMap<String, Token>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    session_ttl: Duration,
    /// Failures within `failure_window` that lock a user name out, and an address.
    max_user_failures: u32,
    max_ip_failures: u32,
    failure_window: Duration,
    /// Verified against when the user does not exist, so both cases take as long.
    dummy_hash: String,
}

/// Why a login was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginError {
    Invalid,
    /// Too many failures; try again after this long.
    Limited(Duration),
}

impl Auth {
    pub fn new(users: Vec<User>, tokens: Vec<Token>, session_ttl: Duration) -> Auth {
        Auth {
            users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
            tokens: tokens.into_iter().map(|t| (t.sha256.to_ascii_lowercase(), t)).collect(),
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            session_ttl,
            max_user_failures: 5,
            // higher: colleagues behind one NAT should not lock each other out
            max_ip_failures: 20,
            failure_window: Duration::from_secs(15 * 60),
            dummy_hash: hash_password("not a password anyone has"),
        }
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    fn limited(&self, keys: &[String]) -> Option<Duration> {
        let mut f = self.failures.lock().expect("failures lock");
        let now = Instant::now();
        f.retain(|_, (_, since)| now.duration_since(*since) < self.failure_window);
        keys.iter()
            .filter_map(|k| {
                let max = if k.starts_with("ip:") { self.max_ip_failures } else { self.max_user_failures };
                f.get(k).filter(|(n, _)| *n >= max)
            })
            .map(|(_, since)| self.failure_window.saturating_sub(now.duration_since(*since)))
            .max()
    }

    /// Checks a password; on success opens a session and returns its cookie value.
    pub fn login(&self, name: &str, password: &str, from: IpAddr) -> Result<(String, Principal), LoginError> {
        let keys = [format!("ip:{from}"), format!("user:{name}")];
        if let Some(wait) = self.limited(&keys) {
            return Err(LoginError::Limited(wait));
        }
        let user = self.users.get(name);
        let hash = user.map_or(self.dummy_hash.as_str(), |u| u.password_hash.as_str());
        let ok = PasswordHash::new(hash)
            .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
            .unwrap_or(false);
        match user {
            Some(u) if ok => {
                let principal = Principal { name: u.name.clone(), role: u.role, csrf: Some(random_token()) };
                let id = random_token();
                self.sessions.lock().expect("sessions lock").insert(
                    sha256_hex(&id),
                    Session { principal: principal.clone(), expires: Instant::now() + self.session_ttl },
                );
                Ok((id, principal))
            }
            _ => {
                let mut f = self.failures.lock().expect("failures lock");
                for k in keys {
                    let e = f.entry(k).or_insert((0, Instant::now()));
                    e.0 += 1;
                }
                Err(LoginError::Invalid)
            }
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
        Auth::new(users, tokens, Duration::from_secs(3600))
    }

    #[test]
    fn passwords_sessions_and_tokens() {
        let a = auth();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let (cookie, p) = a.login("ana", "correct horse", ip).unwrap();
        assert_eq!(p.role, Role::Operator);
        assert!(p.csrf.as_ref().unwrap().len() == 64);
        assert_eq!(a.session(&cookie).unwrap().name, "ana");
        a.logout(&cookie);
        assert!(a.session(&cookie).is_none());
        assert_eq!(a.login("ana", "wrong", ip).unwrap_err(), LoginError::Invalid);
        assert_eq!(a.login("nobody", "correct horse", ip).unwrap_err(), LoginError::Invalid);
        assert_eq!(a.token("s3cr3t-token").unwrap().role, Role::Viewer);
        assert!(a.token("guess").is_none());
    }

    #[test]
    fn repeated_failures_lock_the_address_and_the_user_out() {
        let a = auth();
        let ip: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..5 {
            assert_eq!(a.login("ana", "nope", ip).unwrap_err(), LoginError::Invalid);
        }
        // even the right password is refused now for that user, from anywhere
        assert!(matches!(a.login("ana", "correct horse", ip), Err(LoginError::Limited(_))));
        assert!(matches!(
            a.login("ana", "correct horse", "198.51.100.1".parse().unwrap()),
            Err(LoginError::Limited(_))
        ));
        // an address guessing many names is locked out after 20
        let ip2: IpAddr = "192.0.2.3".parse().unwrap();
        for i in 0..20 {
            assert_eq!(a.login(&format!("u{i}"), "x", ip2).unwrap_err(), LoginError::Invalid);
        }
        assert!(matches!(a.login("u99", "x", ip2), Err(LoginError::Limited(_))));
    }

    #[test]
    fn comparisons_are_exact() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }
}
