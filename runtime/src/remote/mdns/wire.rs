//! The mDNS constants and the checks every received packet goes through before
//! [`simple_dns`] sees it.

use std::net::{Ipv4Addr, Ipv6Addr};

use simple_dns::{Name, Packet};

/// The mDNS port: queries and responses go to it, and responses come from it (RFC 6762 §6).
pub const PORT: u16 = 5353;
/// The IPv4 group.
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
/// The IPv6 group (link-local scope).
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0xfb);
/// The largest mDNS packet (RFC 6762 §17: 9,000 bytes, IP and UDP headers included), and so
/// the receive buffer: anything longer arrives cut, fails to parse and is dropped.
pub const MAX_PACKET: usize = 9000;
/// TTL of records about the host (SRV, A, AAAA), RFC 6762 §10.
pub const HOST_TTL: u32 = 120;
/// TTL of the other records (PTR, TXT), RFC 6762 §10.
pub const OTHER_TTL: u32 = 4500;
/// TTL in answers to legacy unicast queries (RFC 6762 §6.7: at most 10 s).
pub const LEGACY_TTL: u32 = 10;
/// RFC 6762 §8.3: the TTL of a goodbye.
pub const GOODBYE_TTL: u32 = 0;

/// The fixed 12 bytes in front of every DNS message.
const HEADER_LEN: usize = 12;
/// The shortest question: the root name (1 byte), type and class.
const MIN_QUESTION: usize = 1 + 4;
/// The shortest record: the root name, type, class, TTL and data length.
const MIN_RECORD: usize = 1 + 10;

/// What the first 12 bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The message id (echoed in legacy unicast answers).
    pub id: u16,
    /// QR: a response, not a query.
    pub response: bool,
    /// OPCODE: mDNS uses 0 only (RFC 6762 §18.3).
    pub opcode: u8,
    /// RCODE: mDNS responses carry 0 (RFC 6762 §18.11).
    pub rcode: u8,
    /// Questions, answers, authority and additional records.
    pub counts: [u16; 4],
}

impl Header {
    /// The header of `packet`, or `None` if it is shorter than one.
    pub fn read(packet: &[u8]) -> Option<Header> {
        let bytes: &[u8; HEADER_LEN] = packet.get(..HEADER_LEN)?.try_into().ok()?;
        let word = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
        Some(Header {
            id: word(0),
            response: bytes[2] & 0x80 != 0,
            opcode: (bytes[2] >> 3) & 0x0f,
            rcode: bytes[3] & 0x0f,
            counts: [word(4), word(6), word(8), word(10)],
        })
    }

    /// Whether the counts fit in `len` bytes at all, each entry at its shortest.
    ///
    /// Hand-written because simple-dns reserves room for as many entries as the header
    /// claims before it reads the first one: a 12-byte packet claiming 4 × 65,535 entries
    /// would make it reserve tens of MB, once per packet.
    fn fits(&self, len: usize) -> bool {
        let [questions, answers, authority, additional] = self.counts.map(usize::from);
        let least = questions * MIN_QUESTION + (answers + authority + additional) * MIN_RECORD;
        HEADER_LEN + least <= len
    }
}

/// `packet` parsed, if it is a plausible mDNS message: at most [`MAX_PACKET`] bytes, opcode
/// 0, counts that fit its size, and well formed throughout (simple-dns follows compression
/// pointers only backwards and stops a name at 255 bytes, so the work is bounded by the
/// packet's size).
pub fn parse(packet: &[u8]) -> Option<(Header, Packet<'_>)> {
    let header = Header::read(packet)?;
    if packet.len() > MAX_PACKET || header.opcode != 0 || !header.fits(packet.len()) {
        return None;
    }
    Packet::parse(packet).ok().map(|parsed| (header, parsed))
}

/// A name made of `labels` taken as they are (an instance label may hold dots and spaces;
/// RFC 6763 §4.3), or `None` if a label is empty or longer than 63 bytes or the whole name
/// longer than 255.
pub fn name(labels: &[&str]) -> Option<Name<'static>> {
    // `Label::new` would read `\` as an escape; these bytes are the label itself.
    if labels.iter().any(|l| l.is_empty() || l.len() > 63) {
        return None;
    }
    let labels: Vec<_> = labels
        .iter()
        .map(|label| simple_dns::Label::new_unchecked(label.as_bytes().to_vec()))
        .collect();
    // On the wire: a length byte per label, the labels, and the root's zero byte.
    let wire_len = labels.iter().map(|l| l.len() + 1).sum::<usize>() + 1;
    (wire_len <= 255).then(|| Name::new_with_labels(&labels).into_owned())
}

/// The service type as a name.
pub fn service_type() -> Name<'static> {
    name(&["_openwork", "_tcp", "local"]).expect("a valid constant name")
}

/// The DNS-SD service enumeration name (RFC 6763 §9), answered with our service type.
pub fn services_meta() -> Name<'static> {
    name(&["_services", "_dns-sd", "_udp", "local"]).expect("a valid constant name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_type_constant_and_the_name_agree() {
        assert_eq!(
            format!("{}.", service_type()),
            super::super::SERVICE_TYPE,
            "one service type"
        );
    }

    #[test]
    fn counts_the_packet_cannot_hold_are_refused_before_parsing() {
        // A bare header claiming 65,535 of everything.
        let mut packet = vec![0u8; 12];
        packet[4..12].copy_from_slice(&[0xff; 8]);
        assert!(parse(&packet).is_none());
        // The same counts in a packet big enough for them would be read (and fail on
        // content), so the check is about size, not about large numbers.
        let header = Header::read(&packet).unwrap();
        assert!(!header.fits(MAX_PACKET));
        let small = Header {
            counts: [1, 1, 0, 0],
            ..header
        };
        assert!(small.fits(12 + 5 + 11));
        assert!(!small.fits(12 + 5 + 10));
    }

    #[test]
    fn packets_over_the_mdns_limit_and_other_opcodes_are_refused() {
        let query = {
            let mut packet = Packet::new_query(0);
            packet.questions.push(simple_dns::Question::new(
                service_type(),
                simple_dns::QTYPE::TYPE(simple_dns::TYPE::PTR),
                simple_dns::QCLASS::CLASS(simple_dns::CLASS::IN),
                false,
            ));
            packet.build_bytes_vec().unwrap()
        };
        assert!(parse(&query).is_some());
        let mut long = query.clone();
        long.resize(MAX_PACKET + 1, 0);
        assert!(parse(&long).is_none(), "over 9,000 bytes");
        let mut update = query.clone();
        update[2] |= 5 << 3;
        assert!(parse(&update).is_none(), "opcode 5 (UPDATE)");
    }

    #[test]
    fn labels_are_taken_whole_and_checked() {
        let instance = name(&["a.b c (1)", "_openwork", "_tcp", "local"]).unwrap();
        assert_eq!(instance.get_labels().len(), 4);
        assert!(name(&[&"x".repeat(64), "local"]).is_none());
        assert!(name(&["", "local"]).is_none());
    }
}
