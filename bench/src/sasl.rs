//! `corelog-bench run --sasl USER:PASSWORD`: every Kafka connection of the run logs in with
//! SASL PLAIN (SaslHandshake v1, SaslAuthenticate v1) before its first request, so a run
//! measures a SASL_PLAINTEXT or (with --tls) SASL_SSL listener as clients use it. With
//! --spawn the broker gets that listener and the user.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::Bytes;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;

static CREDS: OnceLock<(String, String)> = OnceLock::new();

/// Connections from now on log in as `spec` (`USER:PASSWORD`).
pub fn enable(spec: &str) -> Result<(), String> {
    let (user, password) = spec
        .split_once(':')
        .filter(|(u, p)| !u.is_empty() && !p.is_empty())
        .ok_or("--sasl takes USER:PASSWORD")?;
    CREDS
        .set((user.to_string(), password.to_string()))
        .map_err(|_| "SASL enabled twice".to_string())
}

pub fn enabled() -> bool {
    CREDS.get().is_some()
}

/// Writes a corelog config holding the user for a spawned broker; returns its path.
pub fn spawn_config(dir: &Path) -> Result<Option<PathBuf>, String> {
    let Some((user, password)) = CREDS.get() else {
        return Ok(None);
    };
    let path = dir.join("bench-sasl.toml");
    let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    std::fs::write(
        &path,
        format!(
            "[sasl]\n[[sasl.users]]\nname = \"{}\"\npassword = \"{}\"\n",
            q(user),
            q(password)
        ),
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some(path))
}

/// Logs in over a fresh connection, when SASL is on. `call(frame)` sends one request
/// frame and returns the response body (after the length).
pub fn login(mut call: impl FnMut(&[u8]) -> Result<Bytes, String>) -> Result<(), String> {
    let Some((user, password)) = CREDS.get() else {
        return Ok(());
    };
    let hs = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN"));
    let resp = crate::kafka::decode_response::<SaslHandshakeRequest>(
        call(&crate::kafka::frame(&hs, 1, 1)?)?,
        1,
    )?;
    if resp.error_code != 0 {
        return Err(format!(
            "SaslHandshake PLAIN refused: error {}",
            resp.error_code
        ));
    }
    let token = format!("\0{user}\0{password}");
    let auth = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token));
    let resp = crate::kafka::decode_response::<SaslAuthenticateRequest>(
        call(&crate::kafka::frame(&auth, 1, 2)?)?,
        1,
    )?;
    if resp.error_code != 0 {
        return Err(format!(
            "SASL login as {user} refused: error {} {}",
            resp.error_code,
            resp.error_message.as_deref().unwrap_or("")
        ));
    }
    Ok(())
}
