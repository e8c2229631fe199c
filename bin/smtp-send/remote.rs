//! Remote delivery: jobs (one message, some recipients at one destination)
//! go to the destination's queue, and up to `send.destination_concurrency`
//! workers per destination work them, each over one connection that it
//! keeps for the next job, up to `send.messages_per_connection`. All
//! workers together hold at most `send.concurrency` connections.
//!
//! A destination is a domain, looked up by MX, or the transport that
//! `send.transports` names for it (a smarthost carries every domain it is
//! given, so its jobs share one queue and its limit).
//!
//! A domain looked up by MX may publish an MTA-STS policy (RFC 8461):
//! looked up once per run, it limits the hosts to the MX patterns it
//! lists and requires TLS with a certificate that names the host
//! (`enforce`), or only has failures written down (`testing`). Every
//! connection to such a domain's hosts is written down for TLS reports
//! (RFC 8460, `postroom tlsrpt send`).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hickory_resolver::TokioResolver;
use postroom::config::{Config, TlsPolicy};
use postroom::delivery::deliver::Outcome;
use postroom::net::dane::{self, Answer, Tlsa};
use postroom::net::dns::{self, Exchanger, RouteError};
use postroom::net::mta_sts::{Fetcher, KnownPolicy};
use postroom::net::tls::ClientTls;
use postroom::net::tlsrpt::{self, Applied, SessionLine, TlsFailure};
use postroom::proto::address::ReversePath;
use postroom::proto::mta_sts::Mode;
use postroom::store::queue::{Priority, QueuedMessage, Recipient};
use tokio::sync::{OnceCell, Semaphore, oneshot};

use crate::client::{Client, SessionError, Setup};

/// Recipients of one message for one destination.
pub struct Job {
    pub message: Arc<QueuedMessage>,
    /// The return path (the envelope's sender, or its VERP form).
    pub sender: ReversePath,
    pub rcpts: Vec<(usize, Recipient)>,
    /// Where the outcomes go.
    pub done: oneshot::Sender<Delivery>,
}

/// What became of a job.
pub struct Delivery {
    /// One per recipient.
    pub outcomes: Vec<(usize, Outcome)>,
    /// Those delivered went to a server that does not speak DSN, so their
    /// NOTIFY ended here: a success report is ours to send, "relayed"
    /// (RFC 3461 §5.2.3).
    pub relayed: bool,
}

/// Where a recipient domain's mail goes.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The queue key: the domain, or `[host]:port` / `host:port`.
    pub key: String,
    /// What to look up: MX of `name`, or `name` itself.
    name: String,
    mx: bool,
    port: u16,
    tls: TlsPolicy,
    /// The recipient domain whose DANE records and MTA-STS policy apply:
    /// a domain reached by its MX records, with no `send.tls_policy`
    /// entry of its own (the administrator's word wins) and no transport.
    policy_domain: Option<String>,
}

impl Destination {
    pub fn for_domain(config: &Config, domain: &str) -> Destination {
        let domain = domain.to_ascii_lowercase();
        match config.send.transport_for(&domain) {
            Some(t) => {
                let port = t.port.unwrap_or(config.send.port);
                let key = if t.mx {
                    format!("{}:{port}", t.host)
                } else {
                    format!("[{}]:{port}", t.host)
                };
                Destination {
                    key,
                    tls: config.send.tls_for(&t.host),
                    name: t.host,
                    mx: t.mx,
                    port,
                    policy_domain: None,
                }
            }
            None => Destination {
                key: domain.clone(),
                tls: config.send.tls_for(&domain),
                policy_domain: (!config.send.tls_policy.contains_key(&domain))
                    .then(|| domain.clone()),
                name: domain,
                mx: true,
                port: config.send.port,
            },
        }
    }
}

/// Everything the workers share.
pub struct Dispatcher {
    config: Arc<Config>,
    resolver: TokioResolver,
    tls: ClientTls,
    credentials: HashMap<String, (String, String)>,
    connections: Arc<Semaphore>,
    queues: Mutex<HashMap<String, Arc<DestinationQueue>>>,
    /// Finds MTA-STS policies (`None` when `send.mta_sts` is off).
    sts: Option<Fetcher>,
    /// Where TLS report lines go (`state/`).
    state_dir: PathBuf,
    /// The validating name servers DANE asks (`None` unless `dns.dnssec`).
    dane: Option<Vec<SocketAddr>>,
    /// The TLSA answers of this run, kept for their TTL.
    tlsa: dane::TlsaCache,
}

/// What protects the TLS of one host.
enum HostPolicy<'a> {
    /// The destination's own `send.tls` or `send.tls_policy`.
    Own,
    /// DANE: the host's validated TLSA records.
    Dane(Vec<Tlsa>),
    /// MTA-STS: the domain's policy, which lists the host.
    Sts(&'a KnownPolicy),
}

/// One destination's waiting jobs and its workers.
struct DestinationQueue {
    destination: Destination,
    state: Mutex<QueueState>,
    /// The hosts to try, looked up once per run.
    hosts: OnceCell<Result<Vec<(String, SocketAddr)>, RouteError>>,
    /// The domain's MTA-STS policy, looked up once per run; `None` when
    /// none applies (no policy, mode `none`, or not a domain by MX).
    sts: OnceCell<Option<KnownPolicy>>,
    /// Whether the domain's MX records are DNSSEC-validated (DANE).
    mx_secure: OnceCell<bool>,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    workers: usize,
}

impl Dispatcher {
    pub fn new(
        config: Arc<Config>,
        resolver: TokioResolver,
        tls: ClientTls,
        credentials: HashMap<String, (String, String)>,
    ) -> Arc<Dispatcher> {
        let sts = config.send.mta_sts.then(|| Fetcher {
            resolver: resolver.clone(),
            tls: tls.verified.clone(),
            cache_dir: config.state_dir().join("mta-sts"),
            port: config.send.mta_sts_port,
            ipv6: config.send.ipv6,
        });
        Arc::new(Dispatcher {
            connections: Arc::new(Semaphore::new(config.send.concurrency)),
            state_dir: config.state_dir(),
            dane: config
                .dns
                .dnssec
                .then(|| dns::nameserver_addresses(&config)),
            config,
            resolver,
            tls,
            credentials,
            queues: Mutex::new(HashMap::new()),
            sts,
            tlsa: dane::TlsaCache::default(),
        })
    }

    /// Queues a job; a worker starts if the destination may have another.
    pub fn submit(self: &Arc<Self>, destination: Destination, job: Job) {
        let queue = {
            let mut queues = lock(&self.queues);
            queues
                .entry(destination.key.clone())
                .or_insert_with(|| {
                    Arc::new(DestinationQueue {
                        destination,
                        state: Mutex::new(QueueState::default()),
                        hosts: OnceCell::new(),
                        sts: OnceCell::new(),
                        mx_secure: OnceCell::new(),
                    })
                })
                .clone()
        };
        let start_worker = {
            let mut state = lock(&queue.state);
            // A user's mail overtakes the list post waiting for the
            // same destination.
            insert_by_priority(&mut state.jobs, job, |j| j.message.envelope.priority);
            if state.workers < self.config.send.destination_concurrency
                && state.workers < state.jobs.len()
            {
                state.workers += 1;
                true
            } else {
                false
            }
        };
        if start_worker {
            tokio::spawn(self.clone().worker(queue));
        }
    }

    /// Works a destination's jobs over one connection until none is left.
    async fn worker(self: Arc<Self>, queue: Arc<DestinationQueue>) {
        // The semaphore is never closed, so acquiring only waits.
        let Ok(_permit) = self.connections.clone().acquire_owned().await else {
            return;
        };
        let mut client: Option<Client> = None;
        loop {
            let job = {
                let mut state = lock(&queue.state);
                match state.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        state.workers -= 1;
                        break;
                    }
                }
            };
            let outcomes = self.deliver(&queue, &mut client, &job).await;
            // A delivery leaves the connection it was made on open.
            let relayed = client.as_ref().is_some_and(|c| !c.speaks_dsn());
            // The message's task may be gone (shutting down); nothing to do.
            let _ = job.done.send(Delivery { outcomes, relayed });
        }
        if let Some(mut client) = client {
            client.quit().await;
        }
    }

    /// One job: on the open connection if there is one and it still works,
    /// else on a new one to the first host that answers.
    async fn deliver(
        &self,
        queue: &DestinationQueue,
        client: &mut Option<Client>,
        job: &Job,
    ) -> Vec<(usize, Outcome)> {
        let everyone = |outcome: Outcome| -> Vec<(usize, Outcome)> {
            job.rcpts
                .iter()
                .map(|(i, _)| (*i, outcome.clone()))
                .collect()
        };
        if let Some(open) = client.as_mut() {
            if open.transactions < self.config.send.messages_per_connection {
                match open
                    .transaction(&job.message, &job.sender, &job.rcpts)
                    .await
                {
                    Ok(outcomes) => return outcomes,
                    // A kept connection the server has since closed: the
                    // job starts over on a fresh one below.
                    Err(e) => tracing::debug!(error = e.text(), "kept connection failed"),
                }
            } else {
                open.quit().await;
            }
            *client = None;
        }
        let sts = queue
            .sts
            .get_or_init(|| self.sts_policy(&queue.destination))
            .await
            .as_ref();
        let hosts = queue
            .hosts
            .get_or_init(|| self.hosts(&queue.destination))
            .await;
        let hosts = match hosts {
            Ok(hosts) => hosts,
            Err(RouteError::Permanent(text)) => return everyone(Outcome::Failed(text.clone())),
            Err(RouteError::Temporary(text)) => return everyone(Outcome::Deferred(text.clone())),
        };
        let mut last = SessionError::Temporary(format!(
            "451 4.4.0 no host to try for {}",
            queue.destination.key
        ));
        for (name, addr) in hosts {
            let policy = match self.host_policy(queue, sts, name, *addr).await {
                Ok(policy) => policy,
                Err(text) => {
                    tracing::info!(host = %name, error = %text, "skipped");
                    last = SessionError::Temporary(text);
                    continue;
                }
            };
            let mut open = match self.open(&queue.destination, name, *addr, &policy).await {
                Ok(open) => open,
                Err(e) => {
                    tracing::info!(host = %name, %addr, error = e.text(), "connection failed");
                    last = e;
                    continue;
                }
            };
            tracing::debug!(host = %name, %addr, tls = open.is_tls(), "connected");
            return match open
                .transaction(&job.message, &job.sender, &job.rcpts)
                .await
            {
                Ok(outcomes) => {
                    *client = Some(open);
                    outcomes
                }
                Err(e) => {
                    // Lost mid-transaction: what the other side got is
                    // unknown, so no other host gets it now.
                    tracing::info!(host = %name, error = e.text(), "transaction failed");
                    everyone(Outcome::Deferred(e.text().to_string()))
                }
            };
        }
        everyone(Outcome::Deferred(last.text().to_string()))
    }

    /// How one host's TLS is protected (RFC 7672 §2.2, RFC 8461 §4): DANE
    /// when the domain's MX records and the host's TLSA records are
    /// validated (it takes precedence over MTA-STS), else the MTA-STS
    /// policy, which may rule the host out, else the destination's own.
    /// An `Err` is why the host is not tried now.
    async fn host_policy<'a>(
        &self,
        queue: &DestinationQueue,
        sts: Option<&'a KnownPolicy>,
        host: &str,
        addr: SocketAddr,
    ) -> Result<HostPolicy<'a>, String> {
        let destination = &queue.destination;
        if let (Some(servers), Some(domain)) = (&self.dane, &destination.policy_domain) {
            let timeout = self.config.dns.timeout;
            let secure = *queue
                .mx_secure
                .get_or_init(|| dane::mx_is_secure(servers, timeout, domain))
                .await;
            if secure {
                match self
                    .tlsa
                    .records(servers, timeout, host, destination.port)
                    .await
                {
                    Answer::Secure(records) if !records.is_empty() => {
                        return Ok(HostPolicy::Dane(records));
                    }
                    Answer::Secure(_) | Answer::Insecure => {}
                    Answer::Failed(text) => {
                        let text = format!(
                            "451 4.7.5 the TLSA records of {host} cannot be had now: {text}"
                        );
                        self.write_down(
                            destination,
                            Applied::None,
                            host,
                            Some(addr),
                            tlsrpt::DNSSEC_INVALID,
                            &text,
                        );
                        return Err(text);
                    }
                }
            }
        }
        match sts {
            // RFC 8461 §4.1: only the MX hosts the policy lists.
            Some(known) if !known.policy.allows_mx(host) => {
                let text = format!(
                    "451 4.7.5 {host} is not an MX host the MTA-STS policy of {} lists",
                    destination.name
                );
                self.write_down(
                    destination,
                    Applied::Sts(known),
                    host,
                    Some(addr),
                    tlsrpt::VALIDATION_FAILURE,
                    &text,
                );
                if known.policy.mode == Mode::Enforce {
                    return Err(text);
                }
                Ok(HostPolicy::Own)
            }
            Some(known) => Ok(HostPolicy::Sts(known)),
            None => Ok(HostPolicy::Own),
        }
    }

    /// A ready connection to one address, following the TLS policy: an
    /// opportunistic handshake that fails is tried once more in plaintext.
    /// A DANE host must match its TLSA records; an MTA-STS host gets a
    /// checked certificate, required under `enforce`; under `testing` a
    /// failure is written down and the connection goes on as the
    /// destination's own policy allows.
    async fn open(
        &self,
        destination: &Destination,
        host: &str,
        addr: SocketAddr,
        policy: &HostPolicy<'_>,
    ) -> Result<Client, SessionError> {
        let send = &self.config.send;
        let helo = send.helo_name.as_deref().unwrap_or(&self.config.hostname);
        let own_tls = match destination.tls {
            TlsPolicy::None => None,
            TlsPolicy::Opportunistic | TlsPolicy::Encrypt => Some(self.tls.any_certificate.clone()),
            TlsPolicy::Verify => Some(self.tls.verified.clone()),
        };
        let own_required = matches!(destination.tls, TlsPolicy::Encrypt | TlsPolicy::Verify);
        let (tls, tls_required, applied) = match policy {
            HostPolicy::Dane(records) => {
                // TLSA records none of which is usable still make TLS
                // mandatory, unauthenticated (RFC 7672 §2.2).
                let config = if records.iter().any(Tlsa::is_usable) {
                    dane::client_config(records.clone()).map_err(|e| {
                        SessionError::Temporary(format!("451 4.7.5 DANE for {host}: {e}"))
                    })?
                } else {
                    self.tls.any_certificate.clone()
                };
                (Some(config), true, Applied::Tlsa(records))
            }
            HostPolicy::Sts(known) => (
                Some(self.tls.verified.clone()),
                known.policy.mode == Mode::Enforce || own_required,
                Applied::Sts(known),
            ),
            HostPolicy::Own => (own_tls.clone(), own_required, Applied::None),
        };
        let mut setup = Setup {
            helo,
            host,
            addr,
            tls,
            tls_required,
            legacy_tls: false,
            credentials: self.credentials.get(&destination.name).cloned(),
            connect_timeout: send.connect_timeout,
            command_timeout: send.command_timeout,
            data_timeout: send.data_timeout,
        };
        let first = Client::open(&setup).await;
        // What this connection tells a TLS report.
        let result = match &first {
            Ok(client) if client.is_tls() => Some((tlsrpt::SUCCESS, "")),
            Ok(_) if setup.tls.is_some() => {
                Some((tlsrpt::STARTTLS_NOT_SUPPORTED, "no STARTTLS offered"))
            }
            Ok(_) => None,
            Err(SessionError::TlsFailed(kind, text)) => Some((kind.result_type(), text.as_str())),
            Err(SessionError::NoStarttls(text)) => {
                Some((tlsrpt::STARTTLS_NOT_SUPPORTED, text.as_str()))
            }
            Err(_) => None,
        };
        if let Some((result, detail)) = result {
            self.write_down(destination, applied, host, Some(addr), result, detail);
        }
        let testing =
            matches!(policy, HostPolicy::Sts(known) if known.policy.mode == Mode::Testing);
        let result = match first {
            Err(SessionError::TlsFailed(_, text)) if testing => {
                tracing::info!(host, error = %text, "MTA-STS testing: the certificate check failed; going on as without a policy");
                setup.tls = own_tls;
                setup.tls_required = own_required;
                Client::open(&setup).await
            }
            other => other,
        };
        // A peer that speaks only TLS 1.0/1.1 gets OpenSSL before it gets
        // plaintext, where the policy is opportunistic (legacy-tls).
        let result = match result {
            Err(SessionError::TlsFailed(TlsFailure::ProtocolVersion, text))
                if cfg!(feature = "legacy-tls") && !setup.tls_required =>
            {
                tracing::info!(host, error = %text, "no TLS 1.2 or 1.3 in common; trying legacy TLS");
                setup.legacy_tls = true;
                let legacy = Client::open(&setup).await;
                setup.legacy_tls = false;
                legacy
            }
            other => other,
        };
        match result {
            Err(SessionError::TlsFailed(_, text)) if !setup.tls_required => {
                tracing::info!(host, error = %text, "TLS failed; trying again without");
                setup.tls = None;
                Client::open(&setup).await
            }
            Err(SessionError::TlsFailed(_, text)) => Err(SessionError::Temporary(text)),
            other => other,
        }
    }

    /// The MTA-STS policy that applies to a destination this run, if any.
    async fn sts_policy(&self, destination: &Destination) -> Option<KnownPolicy> {
        let (fetcher, domain) = (self.sts.as_ref()?, destination.policy_domain.as_ref()?);
        let lookup = fetcher.lookup(domain).await;
        if let Some(failure) = &lookup.failure {
            // A policy fetch is no session with a host: no MX, no address.
            self.write_down(
                destination,
                lookup.policy.as_ref().map_or(Applied::None, Applied::Sts),
                "",
                None,
                failure.result_type(),
                failure.detail(),
            );
        }
        lookup
            .policy
            .filter(|known| known.policy.mode != Mode::None)
    }

    /// Writes down one session (or policy fetch) for the domain's TLS
    /// report.
    fn write_down(
        &self,
        destination: &Destination,
        applied: Applied<'_>,
        host: &str,
        addr: Option<SocketAddr>,
        result: &str,
        detail: &str,
    ) {
        let Some(domain) = &destination.policy_domain else {
            return;
        };
        let line = SessionLine::new(applied, host, addr.map(|a| a.ip()), result, detail);
        if let Err(e) = tlsrpt::record(&self.state_dir, domain, &line) {
            tracing::warn!(error = %e, "cannot write the TLS report record");
        }
    }

    /// The addresses to try, in order: each exchanger's addresses in turn.
    async fn hosts(
        &self,
        destination: &Destination,
    ) -> Result<Vec<(String, SocketAddr)>, RouteError> {
        let ipv6 = self.config.send.ipv6;
        let exchangers = if destination.mx {
            dns::mail_exchangers(&self.resolver, &destination.name, ipv6).await?
        } else {
            let addrs = dns::host_addresses(&self.resolver, &destination.name, ipv6)
                .await
                .map_err(|e| RouteError::Temporary(format!("451 4.4.3 {e}")))?;
            if addrs.is_empty() {
                return Err(RouteError::Temporary(format!(
                    "451 4.4.3 {} has no address",
                    destination.name
                )));
            }
            vec![Exchanger {
                name: destination.name.clone(),
                addrs,
            }]
        };
        Ok(exchangers
            .into_iter()
            .flat_map(|x| {
                let port = destination.port;
                x.addrs
                    .into_iter()
                    .map(move |ip| (x.name.clone(), SocketAddr::new(ip, port)))
            })
            .collect())
    }
}

/// Puts `item` after every one of its priority or higher, before the
/// first of a lower one: FIFO within a priority.
fn insert_by_priority<T>(queue: &mut VecDeque<T>, item: T, priority: impl Fn(&T) -> Priority) {
    let wanted = priority(&item);
    let at = queue
        .iter()
        .position(|other| priority(other) < wanted)
        .unwrap_or(queue.len());
    queue.insert(at, item);
}

/// A poisoned lock only means another task panicked mid-update of a
/// queue of jobs; the data is still a valid queue.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_overtakes_lower_priorities_and_queues_behind_its_own() {
        let mut queue = VecDeque::new();
        let jobs = [
            ("list 1", Priority::Low),
            ("list 2", Priority::Low),
            ("report", Priority::Normal),
            ("user 1", Priority::High),
            ("user 2", Priority::High),
        ];
        for job in jobs {
            insert_by_priority(&mut queue, job, |j| j.1);
        }
        let order: Vec<&str> = queue.iter().map(|j| j.0).collect();
        assert_eq!(order, ["user 1", "user 2", "report", "list 1", "list 2"]);
    }
}
