//! Long-term credentials in the TURN REST style (coturn's `use-auth-secret`) and stateless
//! nonces.

use std::net::SocketAddr;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

use crate::ClientSocket;

/// Longest USERNAME accepted (the REST form is `<unix seconds>:<session id>[:<grant>]`).
pub const MAX_USERNAME_LEN: usize = 256;
/// Hex digits of the nonce MAC.
const NONCE_MAC_HEX: usize = 16;
/// Length of a nonce minted here: 16 hex digits of expiry, then the MAC.
pub(crate) const NONCE_LEN: usize = 16 + NONCE_MAC_HEX;

/// Mints the TURN credentials a client uses until `expiry_unix` (seconds since the epoch):
/// `username = "<expiry_unix>:<user>"`, or `"<expiry_unix>:<user>:<grant>"` with a grant (what
/// the credentials were handed out for, e.g. a call id, which
/// [`crate::Server::handle_grant_revoked`] can end early), and
/// `password = base64(HMAC-SHA1(secret, username))`. The HTTP side hands these out (e.g. in
/// `/api/ice-servers`); the server recomputes the password from the username, so nothing is
/// stored. Per-user quotas count by `user`.
pub fn rest_credentials(
    secret: &[u8],
    user: &str,
    grant: Option<&str>,
    expiry_unix: u64,
) -> (String, String) {
    let username = match grant {
        Some(grant) => format!("{expiry_unix}:{user}:{grant}"),
        None => format!("{expiry_unix}:{user}"),
    };
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

/// A REST username split into its expiry, the user (which quotas count by) and the grant,
/// if any.
pub(crate) struct RestUser<'a> {
    pub expiry: u64,
    pub user: &'a str,
    pub grant: Option<&'a str>,
}

/// Splits a REST username (`<expiry>:<user>[:<grant>]`).
pub(crate) fn parse_username(username: &str) -> Option<RestUser<'_>> {
    if username.len() > MAX_USERNAME_LEN {
        return None;
    }
    let (expiry, rest) = username.split_once(':')?;
    if expiry.is_empty() || expiry.len() > 20 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (user, grant) = match rest.split_once(':') {
        Some((user, grant)) => (user, Some(grant)),
        None => (rest, None),
    };
    if user.is_empty() || grant.is_some_and(str::is_empty) {
        return None;
    }
    Some(RestUser {
        expiry: expiry.parse().ok()?,
        user,
        grant,
    })
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
        let (u, p) = rest_credentials(b"secret", "alice", None, 1_700_000_000);
        assert_eq!(u, "1700000000:alice");
        let (g, _) = rest_credentials(b"secret", "alice", Some("c7"), 1_700_000_000);
        assert_eq!(g, "1700000000:alice:c7");
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(b"secret").unwrap();
        mac.update(u.as_bytes());
        let expect = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(p, expect);
        assert_eq!(p.len(), 28);
    }

    #[test]
    fn usernames() {
        fn p(s: &str) -> Option<(u64, &str, Option<&str>)> {
            parse_username(s).map(|u| (u.expiry, u.user, u.grant))
        }
        assert_eq!(p("12:abc"), Some((12, "abc", None)));
        assert_eq!(p("12:a:b"), Some((12, "a", Some("b"))));
        assert_eq!(p("12:a:b:c"), Some((12, "a", Some("b:c"))));
        assert_eq!(p("abc"), None);
        assert_eq!(p(":abc"), None);
        assert_eq!(p("12:"), None);
        assert_eq!(p("12::b"), None);
        assert_eq!(p("12:a:"), None);
        assert_eq!(p("+12:x"), None);
        assert_eq!(p("99999999999999999999999:x"), None);
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
