//! Long-term credentials in the TURN REST style (coturn's `use-auth-secret`) and stateless
//! nonces.

use std::net::SocketAddr;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use crate::ClientSocket;

/// Longest USERNAME accepted (the REST form is `<unix seconds>:<session id>`).
pub const MAX_USERNAME_LEN: usize = 256;
/// Hex digits of the nonce MAC.
const NONCE_MAC_HEX: usize = 16;
/// Length of a nonce minted here: 16 hex digits of expiry, then the MAC.
pub(crate) const NONCE_LEN: usize = 16 + NONCE_MAC_HEX;

/// Mints the TURN credentials a client uses until `expiry_unix` (seconds since the epoch):
/// `username = "<expiry_unix>:<session_id>"`, `password = base64(HMAC-SHA1(secret, username))`.
/// The HTTP side hands these out (e.g. in `/api/ice-servers`); the server recomputes the
/// password from the username, so nothing is stored.
pub fn rest_credentials(secret: &[u8], session_id: &str, expiry_unix: u64) -> (String, String) {
    let username = format!("{expiry_unix}:{session_id}");
    let password = rest_password(secret, &username);
    (username, password)
}

/// The password for a REST username.
pub(crate) fn rest_password(secret: &[u8], username: &str) -> String {
    let mut mac =
        <Hmac<Sha1> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// A REST username split into its expiry and the session id (which quotas count by).
pub(crate) fn parse_username(username: &str) -> Option<(u64, &str)> {
    if username.len() > MAX_USERNAME_LEN {
        return None;
    }
    let (expiry, session) = username.split_once(':')?;
    if expiry.is_empty() || expiry.len() > 20 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if session.is_empty() {
        return None;
    }
    Some((expiry.parse().ok()?, session))
}

/// Stateless nonces: `hex(expiry) || hex(HMAC-SHA256(key, expiry || client)[..8])`. A nonce is
/// bound to the client's transport address and valid until its expiry.
pub(crate) struct Nonces {
    key: [u8; 32],
}

/// What a nonce check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NonceCheck {
    Valid,
    /// Not minted here, or for another client.
    Invalid,
    Expired,
}

impl Nonces {
    pub(crate) fn new(key: [u8; 32]) -> Nonces {
        Nonces { key }
    }

    fn mac(&self, expiry: u64, client: &ClientSocket) -> [u8; NONCE_MAC_HEX / 2] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC accepts keys of any length");
        mac.update(&expiry.to_be_bytes());
        match client.addr {
            SocketAddr::V4(a) => mac.update(&a.ip().octets()),
            SocketAddr::V6(a) => mac.update(&a.ip().octets()),
        }
        mac.update(&client.addr.port().to_be_bytes());
        mac.update(&[client.transport as u8]);
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; NONCE_MAC_HEX / 2];
        out.copy_from_slice(&full[..NONCE_MAC_HEX / 2]);
        out
    }

    pub(crate) fn mint(&self, expiry: u64, client: &ClientSocket) -> String {
        let mut s = String::with_capacity(NONCE_LEN);
        push_hex(&mut s, &expiry.to_be_bytes());
        push_hex(&mut s, &self.mac(expiry, client));
        s
    }

    pub(crate) fn check(&self, nonce: &str, client: &ClientSocket, wall_now: u64) -> NonceCheck {
        if nonce.len() != NONCE_LEN || !nonce.is_ascii() {
            return NonceCheck::Invalid;
        }
        let (exp_hex, mac_hex) = nonce.split_at(16);
        let Ok(expiry) = u64::from_str_radix(exp_hex, 16) else {
            return NonceCheck::Invalid;
        };
        let mut expected = String::with_capacity(NONCE_MAC_HEX);
        push_hex(&mut expected, &self.mac(expiry, client));
        // Constant-time enough: both are fixed-length and the comparison is over a MAC.
        let diff = expected
            .bytes()
            .zip(mac_hex.bytes())
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff != 0 {
            NonceCheck::Invalid
        } else if expiry < wall_now {
            NonceCheck::Expired
        } else {
            NonceCheck::Valid
        }
    }
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 15)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Transport;

    #[test]
    fn rest_password_matches_coturn() {
        // coturn: echo -n "1700000000:alice" | openssl dgst -sha1 -hmac secret -binary | base64
        let (u, p) = rest_credentials(b"secret", "alice", 1_700_000_000);
        assert_eq!(u, "1700000000:alice");
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(b"secret").unwrap();
        mac.update(u.as_bytes());
        let expect = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(p, expect);
        assert_eq!(p.len(), 28);
    }

    #[test]
    fn usernames() {
        assert_eq!(parse_username("12:abc"), Some((12, "abc")));
        assert_eq!(parse_username("12:a:b"), Some((12, "a:b")));
        assert_eq!(parse_username("abc"), None);
        assert_eq!(parse_username(":abc"), None);
        assert_eq!(parse_username("12:"), None);
        assert_eq!(parse_username("+12:x"), None);
        assert_eq!(parse_username("99999999999999999999999:x"), None);
    }

    #[test]
    fn nonces() {
        let n = Nonces::new([7; 32]);
        let c = ClientSocket {
            addr: "1.2.3.4:5".parse().unwrap(),
            transport: Transport::Udp,
        };
        let other = ClientSocket {
            addr: "1.2.3.4:6".parse().unwrap(),
            transport: Transport::Udp,
        };
        let nonce = n.mint(100, &c);
        assert_eq!(nonce.len(), NONCE_LEN);
        assert_eq!(n.check(&nonce, &c, 100), NonceCheck::Valid);
        assert_eq!(n.check(&nonce, &c, 101), NonceCheck::Expired);
        assert_eq!(n.check(&nonce, &other, 50), NonceCheck::Invalid);
        assert_eq!(n.check("zz", &c, 50), NonceCheck::Invalid);
        assert_eq!(n.check(&"é".repeat(16), &c, 50), NonceCheck::Invalid);
    }
}
