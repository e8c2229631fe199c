//! DNS for every program that asks: a resolver built from `[dns]`, and the
//! questions postroom asks: DNS blocklists, and mail exchangers for
//! `smtp-send`.
//!
//! The name servers are configurable so tests point them at a server they
//! run on loopback, and a site can use a local validating resolver.

use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("DNS resolver setup failed: {0} (set [dns] nameservers in postroom.toml)")]
    Setup(String),
    #[error("DNS lookup of {name} failed: {error}")]
    Lookup { name: String, error: String },
}

/// The addresses of the config's name servers, or the system's
/// (resolv.conf), for questions asked without the resolver (DANE's).
pub fn nameserver_addresses(config: &Config) -> Vec<std::net::SocketAddr> {
    if !config.dns.nameservers.is_empty() {
        return config.dns.nameservers.clone();
    }
    let mut servers: Vec<std::net::SocketAddr> = hickory_resolver::system_conf::read_system_conf()
        .map(|(conf, _)| {
            conf.name_servers()
                .iter()
                .map(|ns| ns.socket_addr)
                .collect()
        })
        .unwrap_or_default();
    servers.dedup();
    servers
}

/// A resolver for the config's name servers (or the system's).
pub fn resolver(config: &Config) -> Result<TokioResolver, DnsError> {
    let mut opts = ResolverOpts::default();
    opts.timeout = config.dns.timeout;
    opts.attempts = 2;
    let builder = if config.dns.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| DnsError::Setup(e.to_string()))?
    } else {
        let mut resolver_config = ResolverConfig::new();
        for &addr in &config.dns.nameservers {
            resolver_config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
            resolver_config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
        }
        TokioResolver::builder_with_config(resolver_config, TokioConnectionProvider::default())
    };
    Ok(builder.with_options(opts).build())
}

/// SPF, DKIM and DMARC checks (the `mail-auth` crate, Stalwart's, Apache-2.0
/// OR MIT) through the config's name servers. mail-auth brings its own
/// hickory version, so this builds its resolver config with that one.
pub fn authenticator(config: &Config) -> Result<mail_auth::MessageAuthenticator, DnsError> {
    use mail_auth::hickory_resolver::config::{
        NameServerConfig as AuthNameServer, ProtocolConfig, ResolverConfig as AuthConfig,
        ResolverOpts as AuthOpts,
    };
    let setup = |e: mail_auth::hickory_resolver::proto::ProtoError| DnsError::Setup(e.to_string());
    if config.dns.nameservers.is_empty() {
        return mail_auth::MessageAuthenticator::new_system_conf().map_err(setup);
    }
    let servers: Vec<AuthNameServer> = config
        .dns
        .nameservers
        .iter()
        .flat_map(|&addr| {
            [
                AuthNameServer::new(addr, ProtocolConfig::Udp),
                AuthNameServer::new(addr, ProtocolConfig::Tcp),
            ]
        })
        .collect();
    let mut opts = AuthOpts::default();
    opts.timeout = config.dns.timeout;
    opts.attempts = 2;
    mail_auth::MessageAuthenticator::new(AuthConfig::from_parts(None, vec![], servers), opts)
        .map_err(setup)
}

/// The DNSBL query name for `ip` in `zone` (RFC 5782 §2.1 and §2.4):
/// reversed octets for IPv4, reversed nibbles for IPv6.
pub fn dnsbl_name(ip: IpAddr, zone: &str) -> String {
    let reversed = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => v6
            .octets()
            .iter()
            .rev()
            .flat_map(|b| [b & 0x0f, b >> 4])
            .map(|n| format!("{n:x}"))
            .collect::<Vec<_>>()
            .join("."),
    };
    format!("{reversed}.{}.", zone.trim_end_matches('.'))
}

/// Whether `zone` lists `ip`: `Some(code)` with the 127.0.0.x answer.
/// A lookup failure is an error for the caller to decide on (smtp-recv
/// lets the client in: a dead blocklist must not stop mail).
pub async fn dnsbl_listed(
    resolver: &TokioResolver,
    ip: IpAddr,
    zone: &str,
) -> Result<Option<IpAddr>, DnsError> {
    let name = dnsbl_name(ip, zone);
    match resolver.ipv4_lookup(name.as_str()).await {
        // RFC 5782 §2.3: only 127.0.0.0/8 answers mean "listed".
        Ok(answers) => Ok(answers
            .iter()
            .map(|a| IpAddr::V4(a.0))
            .find(|a| a.is_loopback())),
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(None),
        Err(e) => Err(DnsError::Lookup {
            name,
            error: e.to_string(),
        }),
    }
}

/// The TXT records at `name`, each one's strings joined (RFC 7208 §3.3);
/// none when the name or the type does not exist.
pub async fn txt_records(resolver: &TokioResolver, name: &str) -> Result<Vec<String>, DnsError> {
    let answers = match resolver.txt_lookup(name).await {
        Ok(answers) => answers,
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => return Ok(Vec::new()),
        Err(e) => {
            return Err(DnsError::Lookup {
                name: name.to_string(),
                error: e.to_string(),
            });
        }
    };
    Ok(answers
        .iter()
        .map(|txt| {
            txt.txt_data()
                .iter()
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect()
        })
        .collect())
}

/// The DMARC policy a domain publishes (RFC 7489 §6.3 `p=`), lower case:
/// `Some("reject")`, `Some("quarantine")`, `Some("none")`, or `None` when
/// it publishes no record. Only the domain itself is asked (no
/// organizational-domain fallback).
pub async fn dmarc_policy(
    resolver: &TokioResolver,
    domain: &str,
) -> Result<Option<String>, DnsError> {
    let name = format!("_dmarc.{}.", domain.trim_end_matches('.'));
    for text in txt_records(resolver, &name).await? {
        if !text
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("v=dmarc1")
        {
            continue;
        }
        let policy = text.split(';').find_map(|tag| {
            let (key, value) = tag.split_once('=')?;
            (key.trim().eq_ignore_ascii_case("p")).then(|| value.trim().to_ascii_lowercase())
        });
        return Ok(policy);
    }
    Ok(None)
}

/// A host to try for a destination, with its addresses in the order to
/// try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchanger {
    pub name: String,
    pub addrs: Vec<IpAddr>,
}

/// Why a destination has no host to try.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The domain says it takes no mail, or does not exist: bounce now.
    #[error("{0}")]
    Permanent(String),
    /// DNS trouble: try again later.
    #[error("{0}")]
    Temporary(String),
}

/// The mail exchangers of `domain` (RFC 5321 §5.1): MX records by
/// preference, shuffled among equals so load spreads; no MX records means
/// the domain itself (the implicit MX); a null MX (RFC 7505) or a domain
/// that does not exist is a permanent failure. Hosts whose addresses cannot
/// be found are left out; if none is left, the failure is temporary.
pub async fn mail_exchangers(
    resolver: &TokioResolver,
    domain: &str,
    ipv6: bool,
) -> Result<Vec<Exchanger>, RouteError> {
    if is_invalid_name(domain) {
        return Err(RouteError::Permanent(format!(
            "550 5.1.2 domain {domain} does not exist (.invalid, RFC 6761)"
        )));
    }
    let fqdn = format!("{}.", domain.trim_end_matches('.'));
    let mut names: Vec<(u16, String)> = match resolver.mx_lookup(fqdn.as_str()).await {
        Ok(answers) => answers
            .iter()
            .map(|mx| {
                let name = mx.exchange().to_ascii();
                (
                    mx.preference(),
                    name.trim_end_matches('.').to_ascii_lowercase(),
                )
            })
            .collect(),
        Err(e) if e.is_nx_domain() => {
            return Err(RouteError::Permanent(format!(
                "550 5.1.2 domain {domain} does not exist (DNS: NXDOMAIN)"
            )));
        }
        Err(e) if e.is_no_records_found() => vec![(0, domain.to_ascii_lowercase())],
        Err(e) => {
            return Err(RouteError::Temporary(format!(
                "451 4.4.3 MX lookup of {domain} failed: {e}"
            )));
        }
    };
    if names.iter().any(|(_, name)| name.is_empty()) {
        return Err(RouteError::Permanent(format!(
            "556 5.1.10 {domain} accepts no mail (null MX, RFC 7505)"
        )));
    }
    order_by_preference(&mut names, &mut rand::thread_rng());
    let mut exchangers = Vec::new();
    let mut last_error = String::new();
    for (_, name) in names {
        match host_addresses(resolver, &name, ipv6).await {
            Ok(addrs) if !addrs.is_empty() => exchangers.push(Exchanger { name, addrs }),
            Ok(_) => last_error = format!("{name} has no address"),
            Err(e) => last_error = e,
        }
    }
    if exchangers.is_empty() {
        return Err(RouteError::Temporary(format!(
            "451 4.4.3 no mail exchanger of {domain} has an address ({last_error})"
        )));
    }
    Ok(exchangers)
}

/// A name under `.invalid`, which never exists: RFC 6761 §6.4 asks
/// resolving code to answer so at once, without sending a query anywhere
/// (so examples and tests that use such names never leave the machine).
pub fn is_invalid_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "invalid" || name.ends_with(".invalid")
}

/// Sorts by preference and shuffles each run of equal preference.
fn order_by_preference(names: &mut [(u16, String)], rng: &mut impl rand::Rng) {
    use rand::seq::SliceRandom;
    names.shuffle(rng);
    // A stable sort keeps the shuffled order among equal preferences.
    names.sort_by_key(|(preference, _)| *preference);
}

/// The IPv6 then IPv4 addresses of a host (IPv4 only without `ipv6`); a
/// literal IP is its own address.
pub async fn host_addresses(
    resolver: &TokioResolver,
    host: &str,
    ipv6: bool,
) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let fqdn = format!("{}.", host.trim_end_matches('.'));
    let absent = |e: &hickory_resolver::ResolveError| e.is_no_records_found() || e.is_nx_domain();
    let mut addrs = Vec::new();
    let mut error = None;
    if ipv6 {
        match resolver.ipv6_lookup(fqdn.as_str()).await {
            Ok(answers) => addrs.extend(answers.iter().map(|a| IpAddr::V6(a.0))),
            Err(e) if absent(&e) => {}
            Err(e) => error = Some(format!("AAAA lookup of {host} failed: {e}")),
        }
    }
    match resolver.ipv4_lookup(fqdn.as_str()).await {
        Ok(answers) => addrs.extend(answers.iter().map(|a| IpAddr::V4(a.0))),
        Err(e) if absent(&e) => {}
        Err(e) => error = Some(format!("A lookup of {host} failed: {e}")),
    }
    match error {
        Some(e) if addrs.is_empty() => Err(e),
        _ => Ok(addrs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn invalid_names_fail_at_once_without_a_query() {
        // A resolver pointed at a port nobody answers: a query would time out.
        let mut config = ResolverConfig::new();
        config.add_name_server(NameServerConfig::new(
            "127.0.0.1:9".parse().unwrap(),
            Protocol::Udp,
        ));
        let mut opts = ResolverOpts::default();
        opts.timeout = std::time::Duration::from_secs(30);
        let resolver =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(opts)
                .build();
        let started = std::time::Instant::now();
        let result = mail_exchangers(&resolver, "elsewhere.INVALID.", false).await;
        assert!(matches!(result, Err(RouteError::Permanent(ref e)) if e.starts_with("550 5.1.2")));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(is_invalid_name("invalid") && !is_invalid_name("invalid.test"));
    }

    #[test]
    fn dnsbl_names() {
        assert_eq!(
            dnsbl_name("192.0.2.99".parse().unwrap(), "bl.example"),
            "99.2.0.192.bl.example."
        );
        let v6 = dnsbl_name("2001:db8::1".parse().unwrap(), "bl.example.");
        assert!(
            v6.starts_with("1.0.0.0.0.0.0.0.") && v6.ends_with(".8.b.d.0.1.0.0.2.bl.example."),
            "{v6}"
        );
    }

    #[test]
    fn equal_preferences_are_shuffled_but_order_is_kept() {
        use rand::SeedableRng;
        let mut seen_first = std::collections::HashSet::new();
        for seed in 0..50 {
            let mut names = vec![
                (20, "c".to_string()),
                (10, "a".to_string()),
                (10, "b".to_string()),
                (30, "d".to_string()),
            ];
            order_by_preference(&mut names, &mut rand::rngs::StdRng::seed_from_u64(seed));
            let prefs: Vec<u16> = names.iter().map(|(p, _)| *p).collect();
            assert_eq!(prefs, [10, 10, 20, 30]);
            seen_first.insert(names[0].1.clone());
        }
        assert_eq!(
            seen_first.len(),
            2,
            "both preference-10 hosts come first sometimes"
        );
    }
}
