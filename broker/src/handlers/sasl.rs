//! SaslHandshake (17) and SaslAuthenticate (36): what a connection on a SASL listener may
//! ask before it has authenticated (ApiVersions, these two, nothing else), and the answer
//! to them on a connection that has (or a listener without SASL).

use std::net::IpAddr;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use crate::api::{Reply, respond};
use crate::errors as code;
use crate::sasl::{Auth, Exchange, Mechanism, Step, Users};

/// One connection's authentication so far.
#[derive(Default)]
pub struct Session {
    exchange: Option<Exchange>,
    /// SaslHandshake v0 was used: the tokens follow as bare length-prefixed frames, not
    /// inside SaslAuthenticate (what librdkafka, which needs v0 advertised, never does
    /// when v1 is there, but an old client may).
    raw_tokens: bool,
    /// Who authenticated, once someone has.
    pub user: Option<String>,
    /// The mechanism of the exchange under way or last ended.
    mechanism: Option<Mechanism>,
    /// When the authenticated session ends (KIP-368, `connections.max.reauth.ms`): after
    /// it, only a re-authentication is served.
    pub expires: Option<Instant>,
}

/// How long past a session's end a re-authentication under way may take.
const REAUTH_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl Session {
    /// Whether the session has ended: its lifetime is over and no re-authentication is
    /// under way, or one is but has taken past [`REAUTH_GRACE`] (a client must not keep a
    /// session alive by starting exchanges it never finishes).
    pub fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|e| match self.exchange {
            None => now >= e,
            Some(_) => now >= e + REAUTH_GRACE,
        })
    }

    /// A client that authenticated (user set) and names a user: the session begins, or
    /// (on re-authentication) goes on, and its lifetime starts again.
    fn authenticated(&mut self, auth: &Auth, user: String) -> Result<(), String> {
        if let Some(before) = &self.user {
            if *before != user {
                return Err(format!(
                    "re-authentication as {user:?} on a connection of {before:?}"
                ));
            }
        }
        self.user = Some(user);
        self.exchange = None;
        self.expires = auth.reauth.map(|d| Instant::now() + d);
        Ok(())
    }
}

/// What to do with a request that arrived before authentication.
pub enum PreAuth {
    /// Serve it as usual (ApiVersions).
    Pass,
    /// Send this answer; then go on reading, or close after the failure delay.
    Answer { reply: Reply, close: bool },
    /// Close at once: a request that has no business here.
    Refuse(String),
}

fn mechanisms(auth: &Auth) -> Vec<StrBytes> {
    auth.mechanisms
        .iter()
        .map(|m| StrBytes::from_static_str(m.name()))
        .collect()
}

/// Handles a request on a SASL listener's connection that has not authenticated yet.
#[allow(clippy::too_many_arguments)]
pub fn before_auth(
    auth: &Auth,
    users: &Users,
    session: &mut Session,
    ip: IpAddr,
    key: ApiKey,
    version: i16,
    c: i32,
    mut body: Bytes,
) -> PreAuth {
    match key {
        ApiKey::ApiVersions => PreAuth::Pass,
        ApiKey::SaslHandshake => {
            let Ok(req) = SaslHandshakeRequest::decode(&mut body, version) else {
                return PreAuth::Refuse("malformed SaslHandshake".into());
            };
            if session.user.is_some() && (version == 0 || auth.reauth.is_none()) {
                // Re-authentication (KIP-368) is asked for with SaslHandshake v1 and
                // SaslAuthenticate tokens, and only where sessions have a lifetime.
                return PreAuth::Refuse("SaslHandshake on an authenticated connection".into());
            }
            if session.exchange.is_some() {
                // One handshake per authentication, as Kafka has it.
                return PreAuth::Answer {
                    reply: respond(
                        c,
                        version,
                        &SaslHandshakeResponse::default()
                            .with_mechanisms(mechanisms(auth))
                            .with_error_code(code::ILLEGAL_SASL_STATE),
                    ),
                    close: true,
                };
            }
            let mut chosen =
                Mechanism::parse(req.mechanism.as_str()).filter(|m| auth.mechanisms.contains(m));
            if session.user.is_some() && chosen != session.mechanism {
                // A re-authentication keeps the mechanism (Kafka's rule).
                chosen = None;
            }
            session.mechanism = chosen;
            session.exchange = chosen.map(Exchange::new);
            session.raw_tokens = chosen.is_some() && version == 0;
            let resp = SaslHandshakeResponse::default()
                .with_mechanisms(mechanisms(auth))
                .with_error_code(match chosen {
                    Some(_) => code::NONE,
                    None => code::UNSUPPORTED_SASL_MECHANISM,
                });
            PreAuth::Answer {
                reply: respond(c, version, &resp),
                close: chosen.is_none(),
            }
        }
        ApiKey::SaslAuthenticate => {
            let Ok(req) = SaslAuthenticateRequest::decode(&mut body, version) else {
                return PreAuth::Refuse("malformed SaslAuthenticate".into());
            };
            let fail = |error: i16, message: String| PreAuth::Answer {
                reply: respond(
                    c,
                    version,
                    &SaslAuthenticateResponse::default()
                        .with_error_code(error)
                        .with_error_message(Some(StrBytes::from_string(message))),
                ),
                close: true,
            };
            let Some(exchange) = session.exchange.as_mut() else {
                return fail(
                    code::ILLEGAL_SASL_STATE,
                    "SaslAuthenticate before SaslHandshake".into(),
                );
            };
            match checked_step(auth, users, exchange, ip, &req.auth_bytes) {
                Step::Challenge(challenge) => PreAuth::Answer {
                    reply: respond(
                        c,
                        version,
                        &SaslAuthenticateResponse::default()
                            .with_auth_bytes(Bytes::from(challenge)),
                    ),
                    close: false,
                },
                Step::Done { user, reply } => {
                    tracing::debug!(%ip, %user, "SASL authenticated");
                    if let Err(why) = session.authenticated(auth, user) {
                        tracing::info!(%ip, "SASL re-authentication refused: {why}");
                        return fail(code::SASL_AUTHENTICATION_FAILED, why);
                    }
                    let mut resp =
                        SaslAuthenticateResponse::default().with_auth_bytes(Bytes::from(reply));
                    // v1+ tells the client when to re-authenticate; 0 (no lifetime) asks
                    // for nothing. A v0 client's session ends all the same.
                    if version >= 1 {
                        resp.session_lifetime_ms = auth.reauth.map_or(0, |d| d.as_millis() as i64);
                    }
                    PreAuth::Answer {
                        reply: respond(c, version, &resp),
                        close: false,
                    }
                }
                Step::Failed(why) => fail(code::SASL_AUTHENTICATION_FAILED, why),
            }
        }
        other => PreAuth::Refuse(format!("{other:?} before SASL authentication")),
    }
}

/// SaslHandshake or SaslAuthenticate where no exchange may take place: after
/// authentication (no re-authentication is asked for), or on a listener without SASL.
pub fn out_of_place(key: ApiKey, version: i16, c: i32) -> Reply {
    let message = "no SASL exchange expected on this connection now";
    match key {
        ApiKey::SaslHandshake => respond(
            c,
            version,
            &SaslHandshakeResponse::default().with_error_code(code::ILLEGAL_SASL_STATE),
        ),
        _ => respond(
            c,
            version,
            &SaslAuthenticateResponse::default()
                .with_error_code(code::ILLEGAL_SASL_STATE)
                .with_error_message(Some(StrBytes::from_static_str(message))),
        ),
    }
}

impl Session {
    /// Whether the next frame is a bare SASL token (after SaslHandshake v0).
    pub fn raw_tokens(&self) -> bool {
        self.raw_tokens && self.user.is_none()
    }
}

/// A bare token (after SaslHandshake v0): the bare answer to send, if any, and whether to
/// close (a failure: v0 has no error to answer with).
pub fn raw_token(
    auth: &Auth,
    users: &Users,
    session: &mut Session,
    ip: IpAddr,
    token: &[u8],
) -> (Option<Bytes>, bool) {
    let bare = |b: Vec<u8>| {
        let mut out = (b.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(&b);
        Some(Bytes::from(out))
    };
    let Some(exchange) = session.exchange.as_mut() else {
        return (None, true);
    };
    match checked_step(auth, users, exchange, ip, token) {
        Step::Challenge(c) => (bare(c), false),
        Step::Done { user, reply } => {
            tracing::debug!(%ip, %user, "SASL authenticated");
            match session.authenticated(auth, user) {
                Ok(()) => (bare(reply), false),
                Err(_) => (None, true),
            }
        }
        Step::Failed(_) => (None, true),
    }
}

/// One step of `exchange`, refused when its user failed too often lately from `ip`; a
/// failure is counted and logged.
fn checked_step(
    auth: &Auth,
    users: &Users,
    exchange: &mut Exchange,
    ip: IpAddr,
    token: &[u8],
) -> Step {
    let step = exchange.step(token, users);
    let user = exchange.user().unwrap_or("").to_string();
    match step {
        Step::Failed(why) => {
            auth.failed(ip, &user);
            tracing::info!(%ip, %user, reason = %why, "SASL authentication failed");
            Step::Failed(why)
        }
        _ if auth.blocked(ip, &user) => {
            tracing::info!(%ip, %user, "SASL authentication refused: too many failures lately");
            *exchange = Exchange::Over(Some(user));
            Step::Failed(
                "too many failed authentications for this user from this address; try again later"
                    .into(),
            )
        }
        ok => ok,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A session ends at its lifetime; a re-authentication under way holds it open only a
    /// little past that.
    #[test]
    fn a_session_ends_and_an_unfinished_reauthentication_does_not_keep_it() {
        let now = Instant::now();
        let mut s = Session {
            user: Some("alice".into()),
            expires: Some(now + Duration::from_secs(1)),
            ..Session::default()
        };
        assert!(!s.expired(now));
        assert!(s.expired(now + Duration::from_secs(1)));
        s.exchange = Some(Exchange::new(Mechanism::Plain));
        assert!(
            !s.expired(now + Duration::from_secs(2)),
            "re-authenticating"
        );
        assert!(s.expired(now + Duration::from_secs(1) + REAUTH_GRACE));
        s.expires = None;
        assert!(!s.expired(now + Duration::from_secs(3600)), "no lifetime");
    }
}
