//! SASL authentication of Kafka clients: PLAIN and SCRAM-SHA-256/512 (RFC 5802, RFC 7677),
//! the server's side of SaslAuthenticate's tokens.
//!
//! The broker keeps, per user and SCRAM mechanism, only the salt, the iteration count,
//! StoredKey and ServerKey; a PLAIN password is checked by deriving StoredKey from it
//! with the stored salt and comparing (in constant time), so no password is kept either.
//! The primitives are ring's (HMAC, PBKDF2, SHA-2, the system's random numbers), already
//! in the tree for TLS.

use std::collections::HashMap;
use std::num::NonZeroU32;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};
use serde::Deserialize;
use subtle::ConstantTimeEq;

/// Iterations for credentials the broker derives itself (Kafka's minimum for SCRAM).
pub const ITERATIONS: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl Mechanism {
    pub const ALL: [Mechanism; 3] = [Self::ScramSha256, Self::ScramSha512, Self::Plain];

    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The SCRAM mechanism whose credential checks this one's passwords (PLAIN: SHA-256).
    fn scram(self) -> Scram {
        match self {
            Self::ScramSha512 => Scram::SHA512,
            _ => Scram::SHA256,
        }
    }
}

/// One SCRAM hash: its HMAC, digest and PBKDF2.
#[derive(Clone, Copy)]
struct Scram {
    hmac: hmac::Algorithm,
    digest: &'static digest::Algorithm,
    pbkdf2: pbkdf2::Algorithm,
    len: usize,
}

impl Scram {
    const SHA256: Scram = Scram {
        hmac: hmac::HMAC_SHA256,
        digest: &digest::SHA256,
        pbkdf2: pbkdf2::PBKDF2_HMAC_SHA256,
        len: 32,
    };
    const SHA512: Scram = Scram {
        hmac: hmac::HMAC_SHA512,
        digest: &digest::SHA512,
        pbkdf2: pbkdf2::PBKDF2_HMAC_SHA512,
        len: 64,
    };

    fn hmac(self, key: &[u8], msg: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(self.hmac, key), msg)
            .as_ref()
            .to_vec()
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        digest::digest(self.digest, data).as_ref().to_vec()
    }

    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.len];
        let i = NonZeroU32::new(iterations.max(1)).expect("at least 1");
        pbkdf2::derive(self.pbkdf2, i, salt, password, &mut out);
        out
    }
}

/// What the broker keeps of one user's password for one SCRAM mechanism.
#[derive(Clone)]
pub struct ScramCredential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredential {
    /// From a salted password (what AlterUserScramCredentials carries).
    pub fn from_salted(
        mechanism: Mechanism,
        salt: Vec<u8>,
        iterations: u32,
        salted: &[u8],
    ) -> Self {
        let s = mechanism.scram();
        let client_key = s.hmac(salted, b"Client Key");
        Self {
            stored_key: s.hash(&client_key),
            server_key: s.hmac(salted, b"Server Key"),
            salt,
            iterations,
        }
    }

    /// The salt and salted password a client sends in AlterUserScramCredentials (RFC
    /// 5802's Hi(password, salt, i)), with a fresh random salt.
    pub fn salt_password(
        mechanism: Mechanism,
        password: &str,
        iterations: u32,
    ) -> Result<(Vec<u8>, Vec<u8>), String> {
        let mut salt = vec![0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| "no random numbers from the system".to_string())?;
        let salted = mechanism
            .scram()
            .salted_password(password.as_bytes(), &salt, iterations);
        Ok((salt, salted))
    }

    /// From a password, with a fresh random salt.
    pub fn from_password(mechanism: Mechanism, password: &str) -> Result<Self, String> {
        let mut salt = vec![0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| "no random numbers from the system".to_string())?;
        let salted = mechanism
            .scram()
            .salted_password(password.as_bytes(), &salt, ITERATIONS);
        Ok(Self::from_salted(mechanism, salt, ITERATIONS, &salted))
    }

    /// The form kept in the cluster metadata.
    pub fn stored(&self) -> corelog_replication::security::StoredCredential {
        corelog_replication::security::StoredCredential {
            salt: self.salt.clone(),
            iterations: self.iterations,
            stored_key: self.stored_key.clone(),
            server_key: self.server_key.clone(),
        }
    }

    /// Whether `password` is the one this credential was made from (constant time).
    fn check_password(&self, s: Scram, password: &[u8]) -> bool {
        let salted = s.salted_password(password, &self.salt, self.iterations);
        let stored = s.hash(&s.hmac(&salted, b"Client Key"));
        bool::from(stored.ct_eq(&self.stored_key))
    }
}

/// A user given in the config, for bootstrap (`[[sasl.users]]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigUser {
    pub name: String,
    pub password: String,
}

/// The `[sasl]` table of the config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SaslConfig {
    /// Mechanisms offered (Kafka's `sasl.enabled.mechanisms`); default all three.
    pub mechanisms: Vec<String>,
    pub users: Vec<ConfigUser>,
    /// How long a failed authentication waits before the connection is closed (Kafka's
    /// `connection.failed.authentication.delay.ms`).
    pub failed_authentication_delay_ms: Option<u64>,
    /// Kafka's `connections.max.reauth.ms`: an authenticated session lasts this long, then
    /// the client must re-authenticate (KIP-368) or is closed. Unset or 0: forever.
    pub connections_max_reauth_ms: Option<u64>,
}

impl SaslConfig {
    pub fn mechanisms(&self) -> Result<Vec<Mechanism>, String> {
        if self.mechanisms.is_empty() {
            return Ok(Mechanism::ALL.to_vec());
        }
        self.mechanisms
            .iter()
            .map(|m| {
                Mechanism::parse(m.trim()).ok_or_else(|| {
                    format!(
                        "sasl mechanism {m:?}: PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 are supported"
                    )
                })
            })
            .collect()
    }
}

/// The users the broker authenticates: name -> SCRAM credentials by mechanism.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: HashMap<String, HashMap<Mechanism, ScramCredential>>,
    /// Key of the salts shown for unknown users: the same user gets the same salt every
    /// time, as a real one would, so asking twice does not tell them apart.
    decoy_key: [u8; 32],
}

impl Users {
    /// The config's users, with credentials derived for both SCRAM mechanisms; the
    /// passwords are not kept.
    pub fn from_config(cfg: &SaslConfig) -> Result<Self, String> {
        let mut out = Self::default();
        ring::rand::SystemRandom::new()
            .fill(&mut out.decoy_key)
            .map_err(|_| "no random numbers from the system".to_string())?;
        for u in &cfg.users {
            if u.name.is_empty() || u.password.is_empty() {
                return Err("a sasl user needs a name and a password".into());
            }
            for m in [Mechanism::ScramSha256, Mechanism::ScramSha512] {
                out.set(&u.name, m, ScramCredential::from_password(m, &u.password)?);
            }
        }
        Ok(out)
    }

    pub fn set(&mut self, user: &str, mechanism: Mechanism, cred: ScramCredential) {
        self.users
            .entry(user.to_string())
            .or_default()
            .insert(mechanism, cred);
    }

    /// These users with those of the cluster metadata (made through
    /// AlterUserScramCredentials): a user there replaces the config's user of that name
    /// for every mechanism, so a rotated password leaves no old one working.
    pub fn with_metadata(
        &self,
        creds: &std::collections::BTreeMap<
            String,
            std::collections::BTreeMap<u8, corelog_replication::security::StoredCredential>,
        >,
    ) -> Self {
        let mut out = self.clone();
        for (user, by_mech) in creds {
            let mut mine = HashMap::new();
            for (code, c) in by_mech {
                if let Some(m) = Mechanism::from_scram_code(*code) {
                    mine.insert(
                        m,
                        ScramCredential {
                            salt: c.salt.clone(),
                            iterations: c.iterations,
                            stored_key: c.stored_key.clone(),
                            server_key: c.server_key.clone(),
                        },
                    );
                }
            }
            out.users.insert(user.clone(), mine);
        }
        out
    }

    /// Every user's name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.users.keys().cloned().collect();
        v.sort();
        v
    }

    /// A user's SCRAM mechanisms and iteration counts (DescribeUserScramCredentials).
    pub fn infos(&self, user: &str) -> Option<Vec<(Mechanism, u32)>> {
        let mut v: Vec<(Mechanism, u32)> = self
            .users
            .get(user)?
            .iter()
            .map(|(m, c)| (*m, c.iterations))
            .collect();
        v.sort_by_key(|(m, _)| m.scram_code());
        Some(v)
    }

    fn get(&self, user: &str, mechanism: Mechanism) -> Option<&ScramCredential> {
        self.users.get(user)?.get(&mechanism.scram_mechanism())
    }

    /// The salt an unknown user is shown.
    fn decoy_salt(&self, user: &str, mechanism: Mechanism) -> Vec<u8> {
        let msg = format!("{}\0{user}", mechanism.name());
        Scram::SHA256.hmac(&self.decoy_key, msg.as_bytes())
    }
}

impl Mechanism {
    /// Kafka's ScramMechanism codes (AlterUserScramCredentials): 1 SHA-256, 2 SHA-512.
    pub fn from_scram_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::ScramSha256),
            2 => Some(Self::ScramSha512),
            _ => None,
        }
    }

    pub fn scram_code(self) -> Option<u8> {
        match self {
            Self::ScramSha256 => Some(1),
            Self::ScramSha512 => Some(2),
            Self::Plain => None,
        }
    }

    fn scram_mechanism(self) -> Mechanism {
        match self {
            Self::Plain => Self::ScramSha256,
            m => m,
        }
    }
}

/// What one SaslAuthenticate token led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this challenge; more tokens follow.
    Challenge(Vec<u8>),
    /// Authenticated as this user; send the last bytes (empty for PLAIN).
    Done { user: String, reply: Vec<u8> },
    /// Refused; the reason is for the log and the client's error message.
    Failed(String),
}

/// One connection's exchange for the mechanism its SaslHandshake chose.
pub enum Exchange {
    Plain,
    /// SCRAM, before the client's first message.
    ScramFirst(Mechanism),
    /// SCRAM, the server's first message sent.
    ScramFinal {
        mechanism: Mechanism,
        user: String,
        /// None for an unknown user: the exchange goes on, and fails at its end, so a
        /// client cannot tell unknown users from wrong passwords.
        cred: Option<ScramCredential>,
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    /// Done or failed; the user it was for, when known (for the failure count).
    Over(Option<String>),
}

const INVALID: &str = "Authentication failed: invalid credentials";

impl Exchange {
    pub fn new(mechanism: Mechanism) -> Self {
        match mechanism {
            Mechanism::Plain => Self::Plain,
            m => Self::ScramFirst(m),
        }
    }

    /// The user this exchange is for, once the client has named one.
    pub fn user(&self) -> Option<&str> {
        match self {
            Self::ScramFinal { user, .. } => Some(user),
            Self::Over(user) => user.as_deref(),
            _ => None,
        }
    }

    /// Takes the client's next token.
    pub fn step(&mut self, token: &[u8], users: &Users) -> Step {
        self.step_with(token, users, &mut |buf| {
            ring::rand::SystemRandom::new().fill(buf).is_ok()
        })
    }

    fn step_with(
        &mut self,
        token: &[u8],
        users: &Users,
        random: &mut dyn FnMut(&mut [u8]) -> bool,
    ) -> Step {
        match std::mem::replace(self, Self::Over(None)) {
            Self::Plain => {
                let (step, user) = plain(token, users);
                *self = Self::Over(user);
                step
            }
            Self::ScramFirst(m) => match self.scram_first(m, token, users, random) {
                Ok(challenge) => Step::Challenge(challenge),
                Err(why) => Step::Failed(why),
            },
            Self::ScramFinal {
                mechanism,
                user,
                cred,
                gs2_header,
                client_first_bare,
                server_first,
                nonce,
            } => {
                *self = Self::Over(Some(user.clone()));
                let Ok(text) = std::str::from_utf8(token) else {
                    return Step::Failed("SCRAM client-final message is not UTF-8".into());
                };
                let Some((without_proof, proof)) = text.rsplit_once(",p=") else {
                    return Step::Failed("SCRAM client-final message has no proof".into());
                };
                let mut attrs = without_proof.split(',');
                let channel = attrs.next().and_then(|a| a.strip_prefix("c="));
                let got_nonce = attrs.next().and_then(|a| a.strip_prefix("r="));
                if channel != Some(&B64.encode(gs2_header.as_bytes())) {
                    return Step::Failed("SCRAM channel binding does not match".into());
                }
                // Kafka's own check is `endsWith`: librdkafka sends its client nonce
                // again in front of the whole nonce, and Kafka takes that.
                if !got_nonce.is_some_and(|n| n.ends_with(nonce.as_str())) {
                    return Step::Failed("SCRAM nonce does not match".into());
                }
                let Ok(proof) = B64.decode(proof) else {
                    return Step::Failed("SCRAM proof is not base64".into());
                };
                // An unknown user costs the same work as a wrong password.
                let known = cred.is_some();
                let cred = cred.unwrap_or_else(|| {
                    let decoy = users.decoy_salt(&user, mechanism);
                    ScramCredential::from_salted(mechanism, decoy.clone(), ITERATIONS, &decoy)
                });
                let s = mechanism.scram();
                let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
                let client_signature = s.hmac(&cred.stored_key, auth_message.as_bytes());
                if proof.len() != client_signature.len() {
                    return Step::Failed(INVALID.into());
                }
                let client_key: Vec<u8> = proof
                    .iter()
                    .zip(&client_signature)
                    .map(|(a, b)| a ^ b)
                    .collect();
                if !bool::from(s.hash(&client_key).ct_eq(&cred.stored_key)) || !known {
                    return Step::Failed(INVALID.into());
                }
                let server_signature = s.hmac(&cred.server_key, auth_message.as_bytes());
                Step::Done {
                    user,
                    reply: format!("v={}", B64.encode(server_signature)).into_bytes(),
                }
            }
            Self::Over(user) => {
                *self = Self::Over(user);
                Step::Failed("the SASL exchange is over".into())
            }
        }
    }

    fn scram_first(
        &mut self,
        mechanism: Mechanism,
        token: &[u8],
        users: &Users,
        random: &mut dyn FnMut(&mut [u8]) -> bool,
    ) -> Result<Vec<u8>, String> {
        let text = std::str::from_utf8(token)
            .map_err(|_| "SCRAM client-first message is not UTF-8".to_string())?;
        // gs2-header: "n," or "y," (no channel binding), then an optional authzid, ",".
        let (cb, rest) = text
            .split_once(',')
            .ok_or("SCRAM client-first message is malformed")?;
        if cb != "n" && cb != "y" {
            return Err("SCRAM channel binding is not supported".into());
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or("SCRAM client-first message is malformed")?;
        let gs2_header = format!("{cb},{authzid},");
        let mut attrs = bare.split(',');
        let user = attrs
            .next()
            .and_then(|a| a.strip_prefix("n="))
            .ok_or("SCRAM client-first message has no user name")?;
        let user = unescape(user)?;
        if let Some(z) = authzid.strip_prefix("a=") {
            if unescape(z)? != user {
                return Err("SCRAM authorization id differs from the user".into());
            }
        } else if !authzid.is_empty() {
            return Err("SCRAM client-first message is malformed".into());
        }
        let client_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or("SCRAM client-first message has no nonce")?;
        for a in attrs {
            if a.starts_with("tokenauth=") {
                return Err("SCRAM delegation tokens are not supported".into());
            }
            if a.starts_with("m=") {
                return Err("SCRAM mandatory extensions are not supported".into());
            }
        }
        let mut server_nonce = [0u8; 24];
        if !random(&mut server_nonce) {
            return Err("no random numbers from the system".into());
        }
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let cred = users.get(&user, mechanism).cloned();
        // An unknown user gets a challenge that looks like a real one.
        let (salt, iterations) = match &cred {
            Some(c) => (c.salt.clone(), c.iterations),
            None => (users.decoy_salt(&user, mechanism), ITERATIONS),
        };
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(&salt));
        let challenge = server_first.clone().into_bytes();
        *self = Self::ScramFinal {
            mechanism,
            user,
            cred,
            gs2_header,
            client_first_bare: bare.to_string(),
            server_first,
            nonce,
        };
        Ok(challenge)
    }
}

/// `=2C` and `=3D` back to `,` and `=` (RFC 5802 saslname); any other `=` is malformed.
fn unescape(name: &str) -> Result<String, String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err("SCRAM user name is malformed".into()),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// PLAIN: `[authzid] NUL authcid NUL passwd`. Also returns the user it named.
fn plain(token: &[u8], users: &Users) -> (Step, Option<String>) {
    let mut parts = token.split(|&b| b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return (Step::Failed("PLAIN token is malformed".into()), None);
    };
    let (Ok(authzid), Ok(user)) = (std::str::from_utf8(authzid), std::str::from_utf8(user)) else {
        return (Step::Failed("PLAIN user name is not UTF-8".into()), None);
    };
    let named = Some(user.to_string());
    if !authzid.is_empty() && authzid != user {
        return (
            Step::Failed("PLAIN authorization id differs from the user".into()),
            named,
        );
    }
    // A user made through the API may have only a SCRAM-SHA-512 credential.
    let known = users
        .get(user, Mechanism::Plain)
        .map(|c| (c, Mechanism::Plain.scram()))
        .or_else(|| {
            users
                .get(user, Mechanism::ScramSha512)
                .map(|c| (c, Mechanism::ScramSha512.scram()))
        });
    let ok = match known {
        Some((c, scram)) => c.check_password(scram, password),
        None => {
            // The same work as for a known user, so timing does not tell them apart.
            let decoy = users.decoy_salt(user, Mechanism::Plain);
            let c =
                ScramCredential::from_salted(Mechanism::Plain, decoy.clone(), ITERATIONS, &decoy);
            let _ = c.check_password(Mechanism::Plain.scram(), password);
            false
        }
    };
    let step = if ok {
        Step::Done {
            user: user.to_string(),
            reply: Vec::new(),
        }
    } else {
        Step::Failed(INVALID.into())
    };
    (step, named)
}

/// Failed authentications from one address within [`FAILURE_WINDOW`] past which it is
/// refused without a check until the window ends.
pub const MAX_FAILURES: u32 = 10;
pub const FAILURE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// One shard's SASL state: the mechanisms offered, failures by address (the users are
/// the shard's, as the cluster metadata changes them).
pub struct Auth {
    pub mechanisms: Vec<Mechanism>,
    /// Wait this long after a failed authentication before closing.
    pub delay: std::time::Duration,
    /// How long an authenticated session lasts (KIP-368), if it ends.
    pub reauth: Option<std::time::Duration>,
    failures: std::cell::RefCell<HashMap<(std::net::IpAddr, String), (u32, std::time::Instant)>>,
}

impl Auth {
    pub fn new(cfg: &SaslConfig) -> Result<Self, String> {
        Ok(Self {
            mechanisms: cfg.mechanisms()?,
            delay: std::time::Duration::from_millis(
                cfg.failed_authentication_delay_ms.unwrap_or(100),
            ),
            reauth: cfg
                .connections_max_reauth_ms
                .filter(|&ms| ms > 0)
                .map(std::time::Duration::from_millis),
            failures: Default::default(),
        })
    }

    /// Whether `user` failed too often lately from `ip` to be let try again yet (keyed by
    /// both: one client with a stale password behind a shared address locks out only
    /// that user there, not everyone).
    pub fn blocked(&self, ip: std::net::IpAddr, user: &str) -> bool {
        self.failures
            .borrow()
            .get(&(ip, user.to_string()))
            .is_some_and(|&(n, since)| n >= MAX_FAILURES && since.elapsed() < FAILURE_WINDOW)
    }

    pub fn failed(&self, ip: std::net::IpAddr, user: &str) {
        let mut f = self.failures.borrow_mut();
        // Bounded: old windows go when the map grows (a scan of many addresses).
        if f.len() >= 10_000 {
            f.retain(|_, (_, since)| since.elapsed() < FAILURE_WINDOW);
        }
        let e = f
            .entry((ip, user.to_string()))
            .or_insert((0, std::time::Instant::now()));
        if e.1.elapsed() >= FAILURE_WINDOW {
            *e = (0, std::time::Instant::now());
        }
        e.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's example exchange, with its salt, iteration count and server nonce.
    #[test]
    fn rfc_7677_scram_sha_256_example() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = Scram::SHA256.salted_password(b"pencil", &salt, 4096);
        let mut users = Users::default();
        users.set(
            "user",
            Mechanism::ScramSha256,
            ScramCredential::from_salted(Mechanism::ScramSha256, salt, 4096, &salted),
        );
        let server_nonce_suffix = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let mut ex = Exchange::new(Mechanism::ScramSha256);
        // The RFC's server nonce is not base64 of random bytes: reproduce it by stepping
        // with a random source, then patching the nonce the way the RFC's server chose.
        let first = ex.step_with(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO", &users, &mut |b| {
            b.fill(7);
            true
        });
        let Step::Challenge(_) = first else {
            panic!("{first:?}")
        };
        if let Exchange::ScramFinal {
            nonce,
            server_first,
            ..
        } = &mut ex
        {
            *nonce = format!("rOprNGfwEbeRWgbNEkqO{server_nonce_suffix}");
            *server_first = format!("r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
        }
        let last = ex.step(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            &users,
        );
        assert_eq!(
            last,
            Step::Done {
                user: "user".into(),
                reply: b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()
            }
        );
    }

    /// A client's side of SCRAM, to drive the server through whole exchanges.
    fn client_final(m: Mechanism, password: &str, first_bare: &str, challenge: &str) -> String {
        let s = m.scram();
        let mut nonce = "";
        let mut salt = Vec::new();
        let mut iterations = 0;
        for a in challenge.split(',') {
            match a.split_at(2) {
                ("r=", v) => nonce = v,
                ("s=", v) => salt = B64.decode(v).unwrap(),
                ("i=", v) => iterations = v.parse().unwrap(),
                _ => {}
            }
        }
        let salted = s.salted_password(password.as_bytes(), &salt, iterations);
        let client_key = s.hmac(&salted, b"Client Key");
        let stored = s.hash(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{first_bare},{challenge},{without_proof}");
        let sig = s.hmac(&stored, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        format!("{without_proof},p={}", B64.encode(proof))
    }

    fn users() -> Users {
        Users::from_config(&SaslConfig {
            users: vec![ConfigUser {
                name: "alice".into(),
                password: "alice-secret".into(),
            }],
            ..Default::default()
        })
        .unwrap()
    }

    fn scram(m: Mechanism, user: &str, password: &str) -> Step {
        let users = users();
        let mut ex = Exchange::new(m);
        let bare = format!("n={user},r=clientnonce123");
        let Step::Challenge(c) = ex.step(format!("n,,{bare}").as_bytes(), &users) else {
            panic!("no challenge")
        };
        let c = String::from_utf8(c).unwrap();
        ex.step(client_final(m, password, &bare, &c).as_bytes(), &users)
    }

    #[test]
    fn scram_and_plain_accept_the_password_and_nothing_else() {
        for m in [Mechanism::ScramSha256, Mechanism::ScramSha512] {
            assert!(
                matches!(scram(m, "alice", "alice-secret"), Step::Done { ref user, .. } if user == "alice")
            );
            assert_eq!(scram(m, "alice", "wrong"), Step::Failed(INVALID.into()));
            assert_eq!(
                scram(m, "bob", "alice-secret"),
                Step::Failed(INVALID.into())
            );
        }
        let u = users();
        let plain = |t: &[u8]| Exchange::new(Mechanism::Plain).step(t, &u);
        assert!(matches!(plain(b"\0alice\0alice-secret"), Step::Done { .. }));
        assert!(matches!(
            plain(b"alice\0alice\0alice-secret"),
            Step::Done { .. }
        ));
        assert_eq!(
            plain(b"\0alice\0alice-secreT"),
            Step::Failed(INVALID.into())
        );
        assert_eq!(plain(b"\0bob\0alice-secret"), Step::Failed(INVALID.into()));
        assert!(matches!(
            plain(b"mallory\0alice\0alice-secret"),
            Step::Failed(_)
        ));
        assert!(matches!(plain(b"alice-secret"), Step::Failed(_)));
    }

    #[test]
    fn an_unknown_user_sees_a_salt_as_steady_as_a_real_ones() {
        let u = users();
        let salt = |user: &str| {
            let mut ex = Exchange::new(Mechanism::ScramSha256);
            let Step::Challenge(c) = ex.step(format!("n,,n={user},r=abc").as_bytes(), &u) else {
                panic!()
            };
            let c = String::from_utf8(c).unwrap();
            c.split(',')
                .find(|a| a.starts_with("s="))
                .unwrap()
                .to_string()
        };
        assert_eq!(salt("alice"), salt("alice"));
        assert_eq!(salt("nobody"), salt("nobody"));
        assert_ne!(salt("nobody"), salt("somebody"));
    }

    #[test]
    fn malformed_tokens_fail_without_panicking() {
        let u = users();
        for t in [
            &b""[..],
            b"n,,",
            b"p=tls-unique,,n=alice,r=x",
            b"n,,n=al=ice,r=x",
            b"n,a=bob,n=alice,r=x",
            b"n,,n=alice",
            b"n,,n=alice,r=",
            b"\xff\xfe",
            b"n,,n=alice,r=abc,tokenauth=true",
        ] {
            let mut ex = Exchange::new(Mechanism::ScramSha256);
            assert!(matches!(ex.step(t, &u), Step::Failed(_)), "{t:?}");
        }
        for last in [
            &b"c=biws,r=wrong,p=AAAA"[..],
            b"garbage",
            b"c=biws,r=x,p=!!!",
        ] {
            let mut ex = Exchange::new(Mechanism::ScramSha256);
            let Step::Challenge(_) = ex.step(b"n,,n=alice,r=abc", &u) else {
                panic!()
            };
            assert!(matches!(ex.step(last, &u), Step::Failed(_)), "{last:?}");
            assert!(matches!(ex.step(last, &u), Step::Failed(_)), "over");
        }
    }
}
