//! Remote delivery: jobs (one message, some recipients at one destination)
//! go to the destination's queue, and up to `send.destination_concurrency`
//! workers per destination work them, each over one connection that it
//! keeps for the next job, up to `send.messages_per_connection`. All
//! workers together hold at most `send.concurrency` connections.
//!
//! A destination is a domain, looked up by MX, or the transport that
//! `send.transports` names for it (a smarthost carries every domain it is
//! given, so its jobs share one queue and its limit).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_resolver::TokioResolver;
use postroom::config::{Config, TlsPolicy};
use postroom::delivery::deliver::Outcome;
use postroom::net::dns::{self, Exchanger, RouteError};
use postroom::net::tls::ClientTls;
use postroom::proto::address::ReversePath;
use postroom::store::queue::{Priority, QueuedMessage, Recipient};
use tokio::sync::{OnceCell, Semaphore, oneshot};

use crate::client::{Client, SessionError, Setup};

/// Recipients of one message for one destination.
pub struct Job {
    pub message: Arc<QueuedMessage>,
    /// The return path (the envelope's sender, or its VERP form).
    pub sender: ReversePath,
    pub rcpts: Vec<(usize, Recipient)>,
    /// Where the outcomes go, one per recipient.
    pub done: oneshot::Sender<Vec<(usize, Outcome)>>,
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
                }
            }
            None => Destination {
                key: domain.clone(),
                tls: config.send.tls_for(&domain),
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
}

/// One destination's waiting jobs and its workers.
struct DestinationQueue {
    destination: Destination,
    state: Mutex<QueueState>,
    /// The hosts to try, looked up once per run.
    hosts: OnceCell<Result<Vec<(String, SocketAddr)>, RouteError>>,
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
        Arc::new(Dispatcher {
            connections: Arc::new(Semaphore::new(config.send.concurrency)),
            config,
            resolver,
            tls,
            credentials,
            queues: Mutex::new(HashMap::new()),
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
            // The message's task may be gone (shutting down); nothing to do.
            let _ = job.done.send(outcomes);
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
            let mut open = match self.open(&queue.destination, name, *addr).await {
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

    /// A ready connection to one address, following the TLS policy: an
    /// opportunistic handshake that fails is tried once more in plaintext.
    async fn open(
        &self,
        destination: &Destination,
        host: &str,
        addr: SocketAddr,
    ) -> Result<Client, SessionError> {
        let send = &self.config.send;
        let helo = send.helo_name.as_deref().unwrap_or(&self.config.hostname);
        let tls = match destination.tls {
            TlsPolicy::None => None,
            TlsPolicy::Opportunistic | TlsPolicy::Encrypt => Some(self.tls.any_certificate.clone()),
            TlsPolicy::Verify => Some(self.tls.verified.clone()),
        };
        let mut setup = Setup {
            helo,
            host,
            addr,
            tls,
            tls_required: matches!(destination.tls, TlsPolicy::Encrypt | TlsPolicy::Verify),
            credentials: self.credentials.get(&destination.name).cloned(),
            connect_timeout: send.connect_timeout,
            command_timeout: send.command_timeout,
            data_timeout: send.data_timeout,
        };
        match Client::open(&setup).await {
            Err(SessionError::TlsFailed(text)) if !setup.tls_required => {
                tracing::info!(host, error = %text, "TLS failed; trying again without");
                setup.tls = None;
                Client::open(&setup).await
            }
            Err(SessionError::TlsFailed(text)) => Err(SessionError::Temporary(text)),
            other => other,
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
