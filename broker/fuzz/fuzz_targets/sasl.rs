//! SASL exchanges (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) fed arbitrary tokens: the first
//! byte picks the mechanism, the rest is split into up to four tokens at 0xFF bytes. No
//! panic, and once an exchange is over (authenticated or refused) nothing more gets in.
#![no_main]

use std::sync::OnceLock;

use corelog_broker::sasl::{ConfigUser, Exchange, Mechanism, SaslConfig, Step, Users};
use libfuzzer_sys::fuzz_target;

fn users() -> &'static Users {
    static USERS: OnceLock<Users> = OnceLock::new();
    USERS.get_or_init(|| {
        Users::from_config(&SaslConfig {
            users: vec![ConfigUser {
                name: "alice".into(),
                password: "alice-secret".into(),
            }],
            ..Default::default()
        })
        .expect("users")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let mechanism = Mechanism::ALL[pick as usize % Mechanism::ALL.len()];
    let mut exchange = Exchange::new(mechanism);
    let mut over = false;
    for token in rest.split(|&b| b == 0xFF).take(4) {
        let step = exchange.step(token, users());
        if over {
            assert!(matches!(step, Step::Failed(_)), "an exchange that was over went on");
        }
        match step {
            Step::Challenge(_) => {}
            // Random bytes do not hold a SCRAM proof for alice-secret; PLAIN may guess it
            // only if the input spells it out.
            Step::Done { .. } => {
                assert!(
                    mechanism == Mechanism::Plain
                        && token.windows(12).any(|w| w == b"alice-secret"),
                    "authenticated without the password"
                );
                over = true;
            }
            Step::Failed(_) => over = true,
        }
    }
});
