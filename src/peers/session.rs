//! One peer connection's handshake, sans-IO: both ends send `Hello` (version, replica id, a
//! fresh nonce) at once; each then proves the shared secret over the other's nonce and its own
//! id (`Auth`), and checks the other's proof. Only then does a session carry entries. A replica
//! that reaches itself (same id), speaks another version or fails the proof is refused.

use super::wire::{Frame, VERSION};
use ring::hmac;

/// What the secret proof is computed over, besides the nonce and the id.
const CONTEXT: &[u8] = b"shardgate-peers";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("the peer speaks protocol version {0}; this replica speaks {VERSION}")]
    Version(u8),
    #[error("connected to itself (same replica id)")]
    SelfConnection,
    #[error("the peer's proof of the shared secret is wrong")]
    BadProof,
    #[error("unexpected {0} before the handshake finished")]
    Unexpected(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Our hello is out; theirs has not come.
    AwaitHello,
    /// Our proof is out; theirs has not come.
    AwaitAuth,
    Open,
}

pub struct Handshake {
    key: hmac::Key,
    ours: u64,
    nonce: [u8; 16],
    theirs: Option<u64>,
    state: State,
}

impl Handshake {
    /// Starts a handshake; the returned frame goes out first.
    pub fn start(secret: &[u8], replica: u64, nonce: [u8; 16]) -> (Handshake, Frame) {
        let hs = Handshake {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            ours: replica,
            nonce,
            theirs: None,
            state: State::AwaitHello,
        };
        let hello = Frame::Hello {
            version: VERSION,
            replica,
            nonce,
        };
        (hs, hello)
    }

    /// Takes a frame that arrived during the handshake. `Ok(Some(frame))`: send it.
    pub fn on_frame(&mut self, frame: &Frame) -> Result<Option<Frame>, HandshakeError> {
        match (self.state, frame) {
            (
                State::AwaitHello,
                Frame::Hello {
                    version,
                    replica,
                    nonce,
                },
            ) => {
                if *version != VERSION {
                    return Err(HandshakeError::Version(*version));
                }
                if *replica == self.ours {
                    return Err(HandshakeError::SelfConnection);
                }
                self.theirs = Some(*replica);
                self.state = State::AwaitAuth;
                Ok(Some(Frame::Auth {
                    mac: self.proof(nonce, self.ours),
                }))
            }
            (State::AwaitAuth, Frame::Auth { mac }) => {
                let theirs = self.theirs.expect("set with their hello");
                let expected = [CONTEXT, &self.nonce[..], &theirs.to_be_bytes()].concat();
                hmac::verify(&self.key, &expected, mac).map_err(|_| HandshakeError::BadProof)?;
                self.state = State::Open;
                Ok(None)
            }
            (_, f) => Err(HandshakeError::Unexpected(kind(f))),
        }
    }

    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// The other replica's id, once its hello came.
    pub fn peer(&self) -> Option<u64> {
        self.theirs
    }

    fn proof(&self, their_nonce: &[u8; 16], replica: u64) -> [u8; 32] {
        let tag = hmac::sign(
            &self.key,
            &[CONTEXT, &their_nonce[..], &replica.to_be_bytes()].concat(),
        );
        tag.as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
    }
}

fn kind(f: &Frame) -> &'static str {
    match f {
        Frame::Hello { .. } => "hello",
        Frame::Auth { .. } => "auth",
        Frame::Entries(_) => "entries",
        Frame::SyncDone => "sync-done",
        Frame::Ping => "ping",
        Frame::Members { .. } => "members",
        Frame::Drain(_) => "drain",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(
        a: &mut Handshake,
        b: &mut Handshake,
        ha: Frame,
        hb: Frame,
    ) -> Result<(), HandshakeError> {
        let auth_b = b.on_frame(&ha)?.expect("b proves");
        let auth_a = a.on_frame(&hb)?.expect("a proves");
        assert_eq!(a.on_frame(&auth_b)?, None);
        assert_eq!(b.on_frame(&auth_a)?, None);
        Ok(())
    }

    #[test]
    fn same_secret_opens_both_ways() {
        let (mut a, ha) = Handshake::start(b"s3cret-s3cret-s3cret", 1, [1; 16]);
        let (mut b, hb) = Handshake::start(b"s3cret-s3cret-s3cret", 2, [2; 16]);
        exchange(&mut a, &mut b, ha, hb).unwrap();
        assert!(a.is_open() && b.is_open());
        assert_eq!((a.peer(), b.peer()), (Some(2), Some(1)));
    }

    #[test]
    fn wrong_secret_self_and_version_are_refused() {
        let (mut a, ha) = Handshake::start(b"right-secret-value", 1, [1; 16]);
        let (mut b, hb) = Handshake::start(b"wrong-secret-value", 2, [2; 16]);
        assert_eq!(
            exchange(&mut a, &mut b, ha, hb),
            Err(HandshakeError::BadProof)
        );
        assert!(!a.is_open());

        let (mut me, hello) = Handshake::start(b"k", 7, [3; 16]);
        assert_eq!(me.on_frame(&hello), Err(HandshakeError::SelfConnection));

        let (mut c, _) = Handshake::start(b"k", 1, [0; 16]);
        let old = Frame::Hello {
            version: 0,
            replica: 9,
            nonce: [0; 16],
        };
        assert_eq!(c.on_frame(&old), Err(HandshakeError::Version(0)));
        let (mut d, _) = Handshake::start(b"k", 1, [0; 16]);
        assert_eq!(
            d.on_frame(&Frame::Entries(Vec::new())),
            Err(HandshakeError::Unexpected("entries"))
        );
    }

    #[test]
    fn a_replayed_proof_fails_with_a_fresh_nonce() {
        // An eavesdropper replays b's proof from an earlier session against a new nonce.
        let (_, earlier_hello) = Handshake::start(b"k-k-k-k-k-k-k-k", 1, [1; 16]);
        let (mut b, hello_b) = Handshake::start(b"k-k-k-k-k-k-k-k", 2, [2; 16]);
        let recorded = b.on_frame(&earlier_hello).unwrap().unwrap();
        let (mut a, _) = Handshake::start(b"k-k-k-k-k-k-k-k", 1, [9; 16]);
        a.on_frame(&hello_b).unwrap();
        assert_eq!(a.on_frame(&recorded), Err(HandshakeError::BadProof));
        assert!(!a.is_open());
    }
}
