//! LAN discovery over mDNS (DNS-SD): a server with remote access advertises
//! `_openwork._tcp`, and `openwork-server-v2 discover` lists who does.
//!
//! The TXT record carries what a client needs to choose and to pin, and nothing that opens
//! anything: `version`, `tls` (`1` or `0`) and `fp`, the first 16 hex digits of the
//! certificate's SHA-256 (enough to tell servers apart and to check a pairing URL against;
//! the full fingerprint comes with the pairing code). Never a token.
//!
//! # Anyone on the LAN can send us anything
//!
//! Port 5353 takes packets from every machine on the link, so both sides are written for a
//! hostile sender:
//!
//! | side | module | keeps from incoming packets | per packet | sends |
//! |---|---|---|---|---|
//! | server (responder) | [`responder`] | nothing: a response is dropped once its header says it is one, unparsed; a query is answered from our own records and dropped | one parse of at most 9,000 bytes (the receive buffer), header counts checked against the size first | each record at most once a second per interface (RFC 6762 §6), legacy unicast answers at most [`responder::UNICAST_ANSWERS_PER_SECOND`] |
//! | `discover` (browser) | [`browser`] | only answers to its own question chain (PTR of the service type → instances → their SRV and TXT → addresses of their SRV targets), at most [`browser::MAX_INSTANCES`] instances of [`browser::MAX_ADDRESSES`] addresses | the same parse | a handful of queries (at 0, 1, 3, 7 … s) |
//!
//! The wire format is [`simple_dns`]; what is ours is the mDNS logic above, the sockets
//! ([`links`]) and one guard in [`wire`] (header counts against the packet's size).
//!
//! # Why not a crate that does all of it
//!
//! - **mdns-sd** (0.21.7, the newest, used until issue 24): a daemon that browses and
//!   caches. It treats a response without a PTR record as meant for it and caches its
//!   records for whatever TTL the sender chose: a LAN peer grew the server from 6.8 MB to
//!   221 MB with 20,000 packets. The cache is its design, not a bug a setting turns off,
//!   and a responder needs no cache at all.
//! - **libmdns** (0.10.1): a responder that reads only queries (it stores nothing, good),
//!   but answers every query in full with no rate limit (a LAN peer turns the server into a
//!   multicast amplifier), announces once where RFC 6762 §8.3 asks for at least twice,
//!   queues its goodbye to its thread and returns without waiting for it (so the goodbye
//!   can be lost at exit), panics (`expect("responder died")`, an abort in our release
//!   profile) if that thread has gone, runs its own thread with a second tokio runtime,
//!   and brings `futures-util`, `multimap`, `hostname`, `log`, `byteorder` and a second
//!   `if-addrs`. It has no browser, so `discover` would need another crate anyway.
//! - **simple-dns** (0.13) parses and writes DNS packets and nothing else, with one
//!   dependency (`bitflags`, already compiled in). Its name parser follows compression
//!   pointers only backwards (so a pointer loop cannot exist) and stops at 255 bytes; its
//!   records borrow from the packet. What no crate gets right for us is which packets to
//!   read at all, what to keep, and how often to answer: that is the code here. The
//!   change made the stripped release stub 0.34 MB smaller (5,162,208 to 4,820,152 bytes
//!   on x86_64 Linux) and the server a thread lighter (mdns-sd's daemon ran on its own).
//!
//! Not implemented, on purpose: probing and conflict resolution (RFC 6762 §8.1, §9). They
//! mean reading other hosts' responses and renaming ourselves when one claims our name,
//! which would let any LAN peer rename or silence the server; our instance name carries the
//! host and the port, so two honest servers do not collide. Known-answer suppression is
//! honoured for the PTR record (the one record other responders share).

pub mod browser;
pub mod links;
pub mod responder;
pub mod wire;

pub use browser::{Found, discover};
pub use responder::Advertisement;

/// The service type.
pub const SERVICE_TYPE: &str = "_openwork._tcp.local.";
/// Hex digits of the fingerprint in the TXT record.
pub const FINGERPRINT_PREFIX_LEN: usize = 16;

/// Why mDNS cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket call failed.
    #[error("cannot {action} for mDNS (UDP port 5353): {source}")]
    Socket {
        /// What was being done.
        action: &'static str,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// No interface carries the address to advertise (or none is up, for an unspecified
    /// bind), so there is nothing to announce on.
    #[error(
        "no network interface has {wanted} (interfaces seen: {seen}); mDNS needs the server bound to an address of an interface that is up"
    )]
    NoInterface {
        /// The bound address.
        wanted: std::net::IpAddr,
        /// The non-loopback interfaces found, by name.
        seen: String,
    },
    /// The host name makes no DNS name.
    #[error("cannot advertise {name:?} over mDNS: a DNS label is 1 to 63 bytes")]
    Name {
        /// The instance name tried.
        name: String,
    },
    /// No interface would join the mDNS multicast group.
    #[error(
        "no interface joined the mDNS multicast group ({tried}); is multicast off on all of them?"
    )]
    NoMulticast {
        /// The interfaces tried and why each failed.
        tried: String,
    },
}
