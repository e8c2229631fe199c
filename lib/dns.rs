//! DNS for every program that asks: a resolver built from `[dns]`, and the
//! questions postroom asks (DNS blocklists now; MX for `smtp-send`).
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
