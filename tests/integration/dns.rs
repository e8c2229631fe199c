//! A small authoritative DNS server on loopback, for tests: it answers A,
//! AAAA, MX, TXT and TLSA questions from a table (with the AD bit for names
//! marked secure), NOERROR with no answer for a
//! known name without that type, NXDOMAIN for unknown names and SERVFAIL
//! for names marked so (RFC 1035 §4.1 wire format, UDP only, no
//! compression in answers). Enough for DNS blocklists and mail routing;
//! never a real network.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One answer: an A address or a TXT string.
#[derive(Clone)]
pub enum Record {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// Preference and exchange ("" for the null MX of RFC 7505).
    Mx(u16, String),
    Txt(String),
    /// Every question about the name gets SERVFAIL.
    ServFail,
    /// A TLSA record: usage, selector, matching type, data.
    Tlsa(u8, u8, u8, Vec<u8>),
    /// Answers about the name carry the AD bit, as a validating
    /// resolver's do for a signed zone.
    Secure,
    /// The TTL of the name's records (60 s without one).
    Ttl(u32),
}

/// The server; stops when dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    records: Arc<Mutex<HashMap<String, Vec<Record>>>>,
    /// How many questions each name got.
    asked: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsServer {
    /// Serves `records` (names lower case, without the final dot).
    pub fn start(records: HashMap<String, Vec<Record>>) -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let records = Arc::new(Mutex::new(records));
        let table = records.clone();
        let asked = Arc::new(Mutex::new(HashMap::new()));
        let counts = asked.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let reply = answer(&buf[..n], &table.lock().unwrap(), &counts);
                if let Some(reply) = reply {
                    let _ = socket.send_to(&reply, peer);
                }
            }
        });
        DnsServer {
            addr,
            records,
            asked,
            stop,
            thread: Some(thread),
        }
    }
}

impl DnsServer {
    /// How many questions `name` got so far.
    pub fn asked(&self, name: &str) -> usize {
        self.asked.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    /// Replaces a name's records from now on (a zone edit).
    pub fn set(&self, name: &str, records: Vec<Record>) {
        self.records
            .lock()
            .unwrap()
            .insert(name.to_string(), records);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Joined, so the socket is closed when the drop returns.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(
    query: &[u8],
    records: &HashMap<String, Vec<Record>>,
    asked: &Mutex<HashMap<String, usize>>,
) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question: labels up to the zero byte, then QTYPE and QCLASS.
    let mut labels = Vec::new();
    let mut i = 12;
    loop {
        let len = *query.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(i..i + len)?).to_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
    let question = &query[12..i + 4];
    let name = labels.join(".");
    *asked.lock().unwrap().entry(name.clone()).or_default() += 1;
    let ttl = records
        .get(&name)
        .and_then(|rs| {
            rs.iter().find_map(|r| match r {
                Record::Ttl(ttl) => Some(*ttl),
                _ => None,
            })
        })
        .unwrap_or(60);
    let matching: Vec<&Record> = records
        .get(&name)
        .map(|rs| {
            rs.iter()
                .filter(|r| {
                    matches!(
                        (r, qtype),
                        (Record::A(_), 1)
                            | (Record::Txt(_), 16)
                            | (Record::Mx(..), 15)
                            | (Record::Aaaa(_), 28)
                            | (Record::Tlsa(..), 52)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let exists = records.contains_key(&name);
    let mut reply = Vec::with_capacity(512);
    reply.extend_from_slice(&query[0..2]); // id
    let servfail = records
        .get(&name)
        .is_some_and(|rs| rs.iter().any(|r| matches!(r, Record::ServFail)));
    // NOERROR, NXDOMAIN or SERVFAIL
    let rcode = if servfail {
        2
    } else if exists {
        0
    } else {
        3
    };
    let secure = records
        .get(&name)
        .is_some_and(|rs| rs.iter().any(|r| matches!(r, Record::Secure)));
    let ad = if secure { 0x20 } else { 0 };
    reply.extend_from_slice(&[0x84 | (query[2] & 0x01), rcode as u8 | ad]); // QR, AA, RD copied; AD
    reply.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    reply.extend_from_slice(&(matching.len() as u16).to_be_bytes()); // ANCOUNT
    reply.extend_from_slice(&[0, 0, 0, 0]); // NSCOUNT, ARCOUNT
    reply.extend_from_slice(question);
    for record in matching {
        reply.extend_from_slice(&[0xc0, 0x0c]); // the name: pointer to the question
        let (rtype, data) = match record {
            Record::A(ip) => (1u16, ip.octets().to_vec()),
            Record::Aaaa(ip) => (28u16, ip.octets().to_vec()),
            Record::Mx(preference, exchange) => {
                let mut data = preference.to_be_bytes().to_vec();
                for label in exchange.split('.').filter(|l| !l.is_empty()) {
                    data.push(label.len() as u8);
                    data.extend_from_slice(label.as_bytes());
                }
                data.push(0);
                (15u16, data)
            }
            Record::ServFail | Record::Secure | Record::Ttl(_) => continue,
            Record::Tlsa(usage, selector, matching, bytes) => {
                let mut data = vec![*usage, *selector, *matching];
                data.extend_from_slice(bytes);
                (52u16, data)
            }
            Record::Txt(text) => {
                let mut data = Vec::new();
                for chunk in text.as_bytes().chunks(255) {
                    data.push(chunk.len() as u8);
                    data.extend_from_slice(chunk);
                }
                (16u16, data)
            }
        };
        reply.extend_from_slice(&rtype.to_be_bytes());
        reply.extend_from_slice(&1u16.to_be_bytes()); // IN
        reply.extend_from_slice(&ttl.to_be_bytes()); // TTL
        reply.extend_from_slice(&(data.len() as u16).to_be_bytes());
        reply.extend_from_slice(&data);
    }
    Some(reply)
}
