//! Which peer a datagram on the SFU's one port belongs to, in O(1): a STUN binding request by
//! the USERNAME's first half (the SFU's ufrag for that peer); anything else by the source
//! address, which is learned only once the peer's ICE has validated it.

use std::collections::HashMap;
use std::net::SocketAddr;

/// A peer's index in the core (never reused while the core lives).
pub type PeerId = u64;

#[derive(Debug, Default)]
pub struct Demux {
    by_ufrag: HashMap<String, PeerId>,
    by_addr: HashMap<SocketAddr, PeerId>,
}

/// What kind of datagram arrived (RFC 7983's first-byte ranges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stun,
    Dtls,
    Rtp,
    Other,
}

pub fn kind(datagram: &[u8]) -> Kind {
    match datagram.first() {
        Some(0..=3) if datagram.len() >= 20 => Kind::Stun,
        Some(20..=63) => Kind::Dtls,
        Some(128..=191) if datagram.len() >= 12 => Kind::Rtp,
        _ => Kind::Other,
    }
}

/// The local (our) half of a STUN USERNAME (`ours:theirs`, RFC 8445 7.2.2), if the datagram
/// is a STUN message that carries one. Reads the attributes only; the peer's ICE agent checks
/// the message's integrity.
pub fn stun_local_ufrag(datagram: &[u8]) -> Option<&str> {
    const MAGIC: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
    const USERNAME: u16 = 0x0006;
    if kind(datagram) != Kind::Stun || datagram[4..8] != MAGIC {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let mut attrs = datagram.get(20..20 + len)?;
    while attrs.len() >= 4 {
        let kind = u16::from_be_bytes([attrs[0], attrs[1]]);
        let len = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
        let value = attrs.get(4..4 + len)?;
        if kind == USERNAME {
            return std::str::from_utf8(value).ok()?.split(':').next();
        }
        attrs = attrs.get(4 + len.div_ceil(4) * 4..).unwrap_or_default();
    }
    None
}

impl Demux {
    pub fn add_peer(&mut self, ufrag: &str, peer: PeerId) {
        self.by_ufrag.insert(ufrag.to_owned(), peer);
    }

    /// Forgets a peer's ufrag and every address learned for it.
    pub fn remove_peer(&mut self, ufrag: &str, addrs: &[SocketAddr]) {
        self.by_ufrag.remove(ufrag);
        for a in addrs {
            self.by_addr.remove(a);
        }
    }

    /// Records that `peer`'s ICE validated `addr`. Returns the peer that had it before, if
    /// another (a client that moved its port to one another peer held).
    pub fn learn(&mut self, addr: SocketAddr, peer: PeerId) -> Option<PeerId> {
        self.by_addr.insert(addr, peer).filter(|p| *p != peer)
    }

    pub fn route(&self, source: SocketAddr, datagram: &[u8]) -> Option<PeerId> {
        if let Some(ufrag) = stun_local_ufrag(datagram) {
            return self.by_ufrag.get(ufrag).copied();
        }
        self.by_addr.get(&source).copied()
    }

    pub fn peers(&self) -> usize {
        self.by_ufrag.len()
    }

    pub fn addresses(&self) -> usize {
        self.by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun_request(username: &str) -> Vec<u8> {
        // Binding request, RFC 5389: header, then USERNAME (0x0006) padded to 4 bytes.
        let mut attr = vec![0x00, 0x06];
        attr.extend((username.len() as u16).to_be_bytes());
        attr.extend(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut out = vec![0x00, 0x01];
        out.extend((attr.len() as u16).to_be_bytes());
        out.extend([0x21, 0x12, 0xa4, 0x42]);
        out.extend([7u8; 12]);
        out.extend(attr);
        out
    }

    #[test]
    fn stun_by_ufrag_rest_by_learned_address() {
        let mut d = Demux::default();
        d.add_peer("abcd", 1);
        d.add_peer("efgh", 2);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(d.route(a, &stun_request("efgh:remote")), Some(2));
        assert_eq!(d.route(a, &stun_request("zzzz:remote")), None);
        let rtp = [0x80u8, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(d.route(a, &rtp), None, "not learned yet");
        assert_eq!(d.learn(a, 2), None);
        assert_eq!(d.route(a, &rtp), Some(2));
        assert_eq!(d.learn(a, 1), Some(2));
        d.remove_peer("abcd", &[a]);
        assert_eq!(d.route(a, &rtp), None);
        assert_eq!(d.route(a, &stun_request("abcd:r")), None);
        assert_eq!((d.peers(), d.addresses()), (1, 0));
    }

    #[test]
    fn kinds_and_garbage() {
        assert_eq!(kind(&[]), Kind::Other);
        assert_eq!(kind(&[22, 254, 253]), Kind::Dtls);
        assert_eq!(kind(&[0x80; 4]), Kind::Other);
        assert_eq!(stun_local_ufrag(&[0u8; 20]), None);
        assert_eq!(stun_local_ufrag(&stun_request("a:b")), Some("a"));
    }
}
