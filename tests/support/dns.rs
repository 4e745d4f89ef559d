//! A real DNS server on loopback (hickory-server), authoritative for one
//! zone whose records a test changes while wsgate runs: SRV records
//! (servers join, leave, change weight and priority) and the A records of
//! their targets. UDP and TCP on the same ephemeral port.

use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::authority::{Catalog, ZoneType};
use hickory_server::proto::rr::rdata::{A, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryAuthority;
use hickory_server::ServerFuture;
use tokio::net::{TcpListener, UdpSocket};

/// The zone every name of a [`DnsServer`] lives in.
pub const ZONE: &str = "wsgate.test.";

/// One SRV record: `priority weight port target`.
#[derive(Debug, Clone, Copy)]
pub struct SrvTarget<'a> {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// A name inside [`ZONE`], such as `a.wsgate.test.`.
    pub target: &'a str,
}

/// The DNS server; [`DnsServer::stop`] closes its sockets (the resolver
/// then gets no answer at all).
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<InMemoryAuthority>,
    server: Option<ServerFuture<Catalog>>,
}

impl DnsServer {
    /// Serves an empty [`ZONE`] (just its SOA) on 127.0.0.1.
    pub async fn start() -> DnsServer {
        let origin = Name::from_str(ZONE).unwrap();
        let mut zone = InMemoryAuthority::empty(origin.clone(), ZoneType::Primary, false);
        let soa = SOA::new(
            Name::from_str("ns.wsgate.test.").unwrap(),
            Name::from_str("admin.wsgate.test.").unwrap(),
            1,
            60,
            60,
            60,
            1,
        );
        zone.upsert_mut(Record::from_rdata(origin.clone(), 1, RData::SOA(soa)), 1);
        let zone = Arc::new(zone);
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![zone.clone()]);
        let (udp, tcp) = bind_udp_and_tcp().await;
        let addr = udp.local_addr().unwrap();
        let mut server = ServerFuture::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5));
        DnsServer {
            addr,
            zone,
            server: Some(server),
        }
    }

    /// Where it answers, for `[global] resolver`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the SRV records of `name` (inside [`ZONE`]); none removes them.
    pub async fn set_srv(&self, name: &str, ttl: u32, targets: &[SrvTarget<'_>]) {
        let rdata = targets.iter().map(|t| {
            RData::SRV(SRV::new(
                t.priority,
                t.weight,
                t.port,
                Name::from_str(t.target).unwrap(),
            ))
        });
        self.replace(name, RecordType::SRV, ttl, rdata.collect()).await;
    }

    /// Replaces the A records of `name` (inside [`ZONE`]).
    pub async fn set_a(&self, name: &str, ttl: u32, ips: &[Ipv4Addr]) {
        let rdata = ips.iter().map(|ip| RData::A(A::from(*ip)));
        self.replace(name, RecordType::A, ttl, rdata.collect()).await;
    }

    async fn replace(&self, name: &str, record_type: RecordType, ttl: u32, rdata: Vec<RData>) {
        let name = Name::from_str(name).unwrap();
        let key = RrKey::new(LowerName::new(&name), record_type);
        let mut records = self.zone.records_mut().await;
        if rdata.is_empty() {
            records.remove(&key);
            return;
        }
        let mut set = RecordSet::with_ttl(name, record_type, ttl);
        for data in rdata {
            set.add_rdata(data);
        }
        records.insert(key, Arc::new(set));
    }

    /// Stops answering: both sockets are closed once this returns.
    pub async fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.shutdown_gracefully().await;
        }
    }
}

/// A UDP socket and a TCP listener on the same ephemeral loopback port (a
/// resolver asks both at one address). Another process may hold the TCP
/// port of a free UDP one: a few other ports are tried.
async fn bind_udp_and_tcp() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}
