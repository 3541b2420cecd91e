//! `corelog serve --config server.properties`: Kafka's own file format and key names, for
//! everything corelog has. Keys corelog does not know, or knows but has no use for, are
//! warned about by name and never fatal, so an existing Kafka config starts a broker.

use crate::config::Config;

/// Keys of Kafka's broker config that corelog accepts but does not need (threads, KRaft
/// roles, the group/transaction internals it runs its own way).
const IGNORED: &[&str] = &[
    "process.roles",
    "controller.quorum.voters",
    "controller.quorum.bootstrap.servers",
    "inter.broker.listener.name",
    "num.network.threads",
    "num.io.threads",
    "num.recovery.threads.per.data.dir",
    "num.replica.fetchers",
    "background.threads",
    "socket.send.buffer.bytes",
    "socket.receive.buffer.bytes",
    "transaction.state.log.replication.factor",
    "transaction.state.log.min.isr",
    "group.initial.rebalance.delay.ms",
    "log.flush.interval.messages",
    "log.flush.interval.ms",
    "zookeeper.connect",
    "zookeeper.connection.timeout.ms",
    "offsets.topic.num.partitions",
    "log.cleaner.enable",
    "delete.topic.enable",
];

/// Parses Java properties text (`key=value`, `key: value` or `key value`; `#`/`!`
/// comments; trailing-backslash continuations) into ordered pairs. A value's trailing
/// ` # comment` is dropped too: Kafka would choke on it, but such lines are common in
/// documentation (corelog's seeds have them).
pub fn parse(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim_start();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with('!'))
        {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            continue;
        }
        pending.push_str(line);
        let entry = std::mem::take(&mut pending);
        let split = entry
            .find(|c: char| c == '=' || c == ':' || c.is_whitespace())
            .unwrap_or(entry.len());
        let key = entry[..split].trim().to_string();
        let mut value = entry[split..].trim_start();
        if let Some(v) = value.strip_prefix(['=', ':']) {
            value = v;
        }
        let value = match value.find(" #").or_else(|| value.find("\t#")) {
            Some(i) => &value[..i],
            None => value,
        };
        out.push((key, value.trim().to_string()));
    }
    out
}

/// `NAME://host:port[,NAME://...]` -> (NAME, `host:port`) each (an empty host means all
/// interfaces, as in Kafka).
fn listener_entries(v: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for one in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, addr) = one.split_once("://").unwrap_or(("PLAINTEXT", one));
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| format!("listener {one:?} has no port"))?;
        let host = if host.is_empty() { "0.0.0.0" } else { host };
        out.push((name.trim().to_ascii_uppercase(), format!("{host}:{port}")));
    }
    Ok(out)
}

/// `user_NAME="PASSWORD"` pairs of a JAAS config line.
fn jaas_users(v: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = v;
    while let Some(i) = rest.find("user_") {
        rest = &rest[i + 5..];
        let Some((name, after)) = rest.split_once('=') else {
            break;
        };
        let Some(quoted) = after.trim_start().strip_prefix('"') else {
            continue;
        };
        let Some(end) = quoted.find('"') else {
            break;
        };
        out.push((name.trim().to_string(), quoted[..end].to_string()));
        rest = &quoted[end + 1..];
    }
    out
}

/// Kafka's listeners, mapped through `listener.security.protocol.map` and without the
/// KRaft controller's (corelog's controller runs on its RPC listener), onto corelog's:
/// one PLAINTEXT listener stays `listen` (as before), several or SSL become `listeners`.
fn apply_listeners(
    cfg: &mut Config,
    listeners: Option<&str>,
    advertised: Option<&str>,
    protocol_map: Option<&str>,
    controller_names: &str,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    let map: Vec<String> = protocol_map
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    let controller: Vec<String> = controller_names
        .split(',')
        .map(|n| n.trim().to_ascii_uppercase())
        .collect();
    // The KRaft controller's listeners are left out (corelog's controller speaks on
    // rpc_listen); the rest keep their names, mapped to protocols by the map.
    let keep = |entries: Vec<(String, String)>, warnings: &mut Vec<String>| {
        let mut out = Vec::new();
        for (name, addr) in entries {
            if controller.contains(&name) {
                warnings.push(format!(
                    "listener {name}: the KRaft controller's; corelog's controller uses rpc_listen, so it is not opened"
                ));
                continue;
            }
            out.push((name, addr));
        }
        out
    };
    let protocol = |name: &str| {
        map.iter()
            .rev()
            .filter_map(|p| p.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map_or(name.to_string(), |(_, p)| p.trim().to_ascii_uppercase())
    };
    let Some(listeners) = listeners else {
        if let Some(adv) = advertised {
            // Advertised without listeners: the one PLAINTEXT listener's address.
            if let Some((_, a)) = keep(listener_entries(adv)?, warnings).first() {
                cfg.advertised_listener = Some(a.clone());
            }
        }
        return Ok(());
    };
    let listeners = keep(listener_entries(listeners)?, warnings);
    let advertised = match advertised {
        Some(a) => keep(listener_entries(a)?, warnings),
        None => Vec::new(),
    };
    match listeners.as_slice() {
        [(name, addr)] if protocol(name) == "PLAINTEXT" => {
            cfg.listen = addr.clone();
            cfg.advertised_listener = advertised
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, a)| a.clone());
        }
        _ => {
            let url = |(n, a): &(String, String)| format!("{n}://{a}");
            cfg.listeners = listeners.iter().map(url).collect();
            cfg.advertised_listeners = advertised.iter().map(url).collect();
            cfg.listener_security_protocol_map = map;
        }
    }
    Ok(())
}

/// Applies Kafka properties to `cfg`; returns the warnings to log (unknown or unused
/// keys, values capped to what one node can do). A malformed value of a known key is an
/// error, as in Kafka.
pub fn apply(cfg: &mut Config, pairs: &[(String, String)]) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    let mut retention = (None, None, None); // ms, minutes, hours: the most precise wins
    let mut roll = (None, None);
    let find = |k: &str| {
        pairs
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    apply_listeners(
        cfg,
        find("listeners"),
        find("advertised.listeners"),
        find("listener.security.protocol.map"),
        find("controller.listener.names").unwrap_or("CONTROLLER"),
        &mut warnings,
    )?;
    let tls = |cfg: &mut Config| cfg.tls.get_or_insert_with(Default::default).clone();
    for (key, value) in pairs {
        let int = || -> Result<i64, String> {
            value
                .parse::<i64>()
                .map_err(|_| format!("{key}={value}: not an integer"))
        };
        let positive = || -> Result<u64, String> {
            value
                .parse::<u64>()
                .map_err(|_| format!("{key}={value}: not a non-negative integer"))
        };
        match key.as_str() {
            "node.id" | "broker.id" => cfg.node_id = int()? as i32,
            // Applied above, together (their order in the file does not matter).
            "listeners"
            | "advertised.listeners"
            | "listener.security.protocol.map"
            | "controller.listener.names" => {}
            "ssl.keystore.type" | "ssl.truststore.type" => {
                if !value.eq_ignore_ascii_case("PEM") {
                    return Err(format!(
                        "{key}={value}: corelog reads PEM files (convert a JKS or PKCS12 store with openssl)"
                    ));
                }
            }
            // A PEM keystore file holds the key and the certificate chain.
            "ssl.keystore.location" => {
                let mut t = tls(cfg);
                t.certificate = value.into();
                cfg.tls = Some(t);
            }
            "ssl.truststore.location" => {
                let mut t = tls(cfg);
                t.ca = Some(value.into());
                cfg.tls = Some(t);
            }
            "ssl.client.auth" => {
                let mut t = tls(cfg);
                t.client_auth = value.parse()?;
                cfg.tls = Some(t);
            }
            "ssl.key.password" | "ssl.keystore.password" | "ssl.truststore.password" => {
                if !value.is_empty() {
                    return Err(format!(
                        "{key}: encrypted keys and password-protected stores are not supported; give an unencrypted PEM key file readable only by the broker"
                    ));
                }
            }
            // Any authorizer class turns ACLs on (Kafka's StandardAuthorizer and the
            // older AclAuthorizer both mean Kafka's ACL model); empty turns them off.
            "authorizer.class.name" => cfg.authorization.enabled = !value.trim().is_empty(),
            "super.users" => {
                cfg.authorization.super_users = value
                    .split(';')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(String::from)
                    .collect();
            }
            "allow.everyone.if.no.acl.found" => {
                cfg.authorization.allow_everyone_if_no_acl_found = value
                    .parse()
                    .map_err(|_| format!("{key}={value}: not true or false"))?;
            }
            // The broker-to-broker links: TLS for SSL (corelog's RPC links have no SASL).
            "security.inter.broker.protocol" => {
                cfg.rpc_tls = match value.trim().to_ascii_uppercase().as_str() {
                    "PLAINTEXT" => false,
                    "SSL" => true,
                    other => {
                        return Err(format!(
                            "{key}={other}: corelog's broker links are PLAINTEXT or SSL (mutual TLS, with the cluster secret)"
                        ));
                    }
                };
            }
            "connections.max.reauth.ms" => {
                let s = cfg.sasl.get_or_insert_with(Default::default);
                s.connections_max_reauth_ms = Some(positive()?);
            }
            "sasl.enabled.mechanisms" => {
                let s = cfg.sasl.get_or_insert_with(Default::default);
                s.mechanisms = value.split(',').map(|m| m.trim().to_string()).collect();
            }
            // The users of a JAAS PlainLoginModule/ScramLoginModule line (`user_NAME="PASSWORD"`),
            // as Kafka's static PLAIN users are given; corelog offers them to every mechanism.
            k if k.ends_with("sasl.jaas.config") => {
                let s = cfg.sasl.get_or_insert_with(Default::default);
                for (name, password) in jaas_users(value) {
                    s.users.retain(|u| u.name != name);
                    s.users.push(crate::sasl::ConfigUser { name, password });
                }
            }
            "ssl.enabled.protocols" => {
                let mut t = tls(cfg);
                t.protocols = value.split(',').map(|p| p.trim().to_string()).collect();
                cfg.tls = Some(t);
            }
            "log.dirs" | "log.dir" => {
                let mut dirs = value.split(',').map(str::trim);
                cfg.data_dir = dirs.next().unwrap_or_default().into();
                if dirs.next().is_some() {
                    warnings.push(format!(
                        "{key}: corelog uses one data dir; using {}",
                        cfg.data_dir.display()
                    ));
                }
            }
            "num.partitions" => cfg.default_partitions = int()? as i32,
            "default.replication.factor" => {
                cfg.default_replication_factor = int()?.clamp(1, 1000) as i16;
            }
            "offsets.topic.replication.factor" => {
                warnings.push(format!(
                    "{key}={value}: corelog gives the offsets topic min(3, brokers) replicas"
                ));
            }
            "controller.quorum.voters" => cfg.voters = vec![value.clone()],
            "log.retention.ms" => retention.0 = Some(int()?),
            "log.retention.minutes" => retention.1 = Some(int()?),
            "log.retention.hours" => retention.2 = Some(int()?),
            "log.retention.bytes" => {
                cfg.retention_bytes = u64::try_from(int()?).ok();
            }
            "log.segment.bytes" => cfg.segment_bytes = positive()?,
            "log.roll.ms" => roll.0 = Some(int()?),
            "log.roll.hours" => roll.1 = Some(int()?),
            "log.retention.check.interval.ms" => cfg.retention_check_interval_ms = positive()?,
            "message.max.bytes" => cfg.max_message_bytes = positive()? as usize,
            "socket.request.max.bytes" => cfg.max_request_bytes = positive()? as usize,
            "queued.max.request.bytes" => {
                // Kafka's -1 means unbounded; corelog keeps a bound.
                if let Ok(v) = u64::try_from(int()?) {
                    cfg.queued_max_request_bytes = v;
                }
            }
            // Redpanda's name for the disk reserve; corelog's own key in TOML.
            "storage_min_free_bytes" | "storage.min.free.bytes" => {
                cfg.storage_min_free_bytes = Some(positive()?)
            }
            "connections.max.idle.ms" => cfg.connections_max_idle_ms = positive()?,
            "max.connections.per.ip" => cfg.max_connections_per_ip = positive()? as usize,
            "auto.create.topics.enable" => {
                cfg.auto_create_topics = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("{key}={value}: not true or false")),
                }
            }
            "log.message.timestamp.before.max.ms" => cfg.message_timestamp_before_max_ms = int()?,
            "log.message.timestamp.after.max.ms" => cfg.message_timestamp_after_max_ms = int()?,
            k if IGNORED.contains(&k) => warnings.push(format!(
                "{k}: a Kafka setting corelog does not use; ignored"
            )),
            k => warnings.push(format!("{k}: unknown setting; ignored")),
        }
    }
    const HOUR: i64 = 3_600_000;
    if let Some(ms) = retention
        .0
        .or(retention.1.map(|m| m * 60_000))
        .or(retention.2.map(|h| h * HOUR))
    {
        cfg.retention_ms = (ms >= 0).then_some(ms);
    }
    if let Some(ms) = roll.0.or(roll.1.map(|h| h * HOUR)) {
        cfg.segment_ms = Some(ms.max(1));
    }
    if cfg.default_replication_factor > 1 && !cfg.clustered() {
        warnings.push(format!(
            "default.replication.factor={}: this broker has no peers (no controller.quorum.voters), so data is kept on this node only",
            cfg.default_replication_factor
        ));
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_lines_with_their_trailing_comments() {
        let text = "# server.properties\n\
            num.partitions=3                    # Default partitions per topic\n\
            default.replication.factor=2        # Replication for fault tolerance\n\
            log.retention.hours=168             # Keep messages for 7 days\n\
            log.segment.bytes=1073741824        # 1GB segments\n";
        let mut cfg = Config::default();
        let warnings = apply(&mut cfg, &parse(text)).unwrap();
        assert_eq!(cfg.default_partitions, 3);
        assert_eq!(cfg.retention_ms, Some(168 * 3_600_000));
        assert_eq!(cfg.segment_bytes, 1 << 30);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("default.replication.factor"));
    }

    #[test]
    fn kafka_keys_formats_and_precedence() {
        let text = "node.id=7\nlisteners=PLAINTEXT://:19092,CONTROLLER://:19093\n\
            advertised.listeners = PLAINTEXT://broker-7.example:19092\n\
            log.dirs=/var/lib/kafka,/mnt/other\nlog.retention.hours=1\nlog.retention.ms=5000\n\
            log.retention.bytes=-1\nmessage.max.bytes: 2000000\nauto.create.topics.enable false\n\
            num.io.threads=8\nsome.plugin.setting=\\\n  continued\nlog.roll.hours=2\n";
        let mut cfg = Config::default();
        let warnings = apply(&mut cfg, &parse(text)).unwrap();
        assert_eq!(cfg.node_id, 7);
        assert_eq!(cfg.listen, "0.0.0.0:19092");
        assert_eq!(cfg.advertised(), ("broker-7.example".to_string(), 19092));
        assert_eq!(cfg.data_dir, std::path::PathBuf::from("/var/lib/kafka"));
        assert_eq!(
            cfg.retention_ms,
            Some(5000),
            "log.retention.ms wins over hours"
        );
        assert_eq!(cfg.retention_bytes, None);
        assert_eq!(cfg.max_message_bytes, 2_000_000);
        assert!(!cfg.auto_create_topics);
        assert_eq!(cfg.segment_ms, Some(2 * 3_600_000));
        let joined = warnings.join("\n");
        assert!(joined.contains("num.io.threads"), "{joined}");
        assert!(joined.contains("some.plugin.setting: unknown"), "{joined}");
        assert!(joined.contains("log.dirs"), "{joined}");
        assert!(apply(&mut cfg, &parse("num.partitions=three")).is_err());
    }

    #[test]
    fn listeners_are_mapped_to_their_protocols_and_the_controllers_left_out() {
        let text = "listeners=CLIENT://:9093,PLAINTEXT://127.0.0.1:9092,CONTROLLER://:9094
            advertised.listeners=CLIENT://kafka.example:9093
            listener.security.protocol.map=CLIENT:SSL,PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
            ssl.keystore.type=PEM
ssl.keystore.location=/etc/corelog/broker.pem
            ssl.truststore.location=/etc/corelog/ca.pem
ssl.client.auth=required
";
        let mut cfg = Config::default();
        let warnings = apply(&mut cfg, &parse(text)).unwrap();
        assert_eq!(
            cfg.listeners,
            ["CLIENT://0.0.0.0:9093", "PLAINTEXT://127.0.0.1:9092"]
        );
        assert_eq!(cfg.advertised_listeners, ["CLIENT://kafka.example:9093"]);
        let tls = cfg.tls.clone().unwrap();
        assert_eq!(
            tls.certificate,
            std::path::PathBuf::from("/etc/corelog/broker.pem")
        );
        assert_eq!(tls.ca, Some("/etc/corelog/ca.pem".into()));
        assert_eq!(tls.client_auth, crate::tls::ClientAuth::Required);
        assert!(warnings.join("\n").contains("CONTROLLER"));
        let l = cfg.listener_list().unwrap();
        assert_eq!(l[0].advertised, ("kafka.example".to_string(), 9093));
        assert_eq!(l[1].advertised, ("127.0.0.1".to_string(), 9092));
        let authz = "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\nsuper.users=User:admin;User:CN=ops,O=corelog\nallow.everyone.if.no.acl.found=true\n";
        let mut a = Config::default();
        apply(&mut a, &parse(authz)).unwrap();
        assert!(a.authorization.enabled);
        assert_eq!(
            a.authorization.super_users,
            ["User:admin", "User:CN=ops,O=corelog"]
        );
        assert!(a.authorization.allow_everyone_if_no_acl_found);
        let jaas = "listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"admin\" password=\"a\" user_admin=\"a\" user_alice=\"s3cret x\";\nsasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512\n";
        let mut c = Config::default();
        apply(&mut c, &parse(jaas)).unwrap();
        let sasl = c.sasl.unwrap();
        let users: Vec<(&str, &str)> = sasl
            .users
            .iter()
            .map(|u| (u.name.as_str(), u.password.as_str()))
            .collect();
        assert_eq!(users, [("admin", "a"), ("alice", "s3cret x")]);
        assert_eq!(sasl.mechanisms, ["PLAIN", "SCRAM-SHA-512"]);
        // A name the map does not know, a keystore Kafka's JKS format, an encrypted key.
        let mut other = Config::default();
        apply(&mut other, &parse("listeners=OTHER://:1,PLAINTEXT://:2\n")).unwrap();
        assert!(other.listener_list().unwrap_err().contains("OTHER"));
        for bad in ["ssl.keystore.type=JKS\n", "ssl.key.password=secret\n"] {
            assert!(apply(&mut Config::default(), &parse(bad)).is_err(), "{bad}");
        }
    }
}
