//! STUN / ChannelData framing: telling the two apart, and splitting a TCP/TLS stream.

use std::ops::Range;

use crate::error::TurnError;

/// The STUN magic cookie (bytes 4..8 of every RFC 5389+ message).
pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// STUN message header length.
pub const STUN_HEADER_LEN: usize = 20;
/// ChannelData header length (channel number, length).
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;
/// Largest message (STUN or ChannelData, headers included) the core accepts.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Channel numbers a client may bind (RFC 5766 range; RFC 8656 narrowed it to 0x4FFF).
pub const CHANNEL_MIN: u16 = 0x4000;
/// See [`CHANNEL_MIN`].
pub const CHANNEL_MAX: u16 = 0x7FFF;

/// Length of the first complete message at the start of a TCP/TLS stream buffer.
///
/// `Ok(Some(n))`: `buf[..n]` is one STUN message or one ChannelData frame including its
/// padding to 4 bytes (RFC 8656 §12.5), to give to [`crate::Server::handle_client_input`].
/// `Ok(None)`: not enough bytes yet. `Err(BadFrame)`: the stream is not TURN (or is
/// desynchronised, or announces a message over [`MAX_MESSAGE_LEN`]); close the connection.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, TurnError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    match first >> 6 {
        0b00 => {
            if buf.len() >= 8 && buf[4..8] != MAGIC_COOKIE {
                return Err(TurnError::BadFrame);
            }
            let Some(len) = buf.get(2..4) else {
                return Ok(None);
            };
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            if len % 4 != 0 || STUN_HEADER_LEN + len > MAX_MESSAGE_LEN {
                return Err(TurnError::BadFrame);
            }
            complete(buf, STUN_HEADER_LEN + len)
        }
        0b01 => {
            let Some(len) = buf.get(2..4) else {
                return Ok(None);
            };
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            let total = CHANNEL_DATA_HEADER_LEN + len.next_multiple_of(4);
            if total > MAX_MESSAGE_LEN + 4 {
                return Err(TurnError::BadFrame);
            }
            complete(buf, total)
        }
        _ => Err(TurnError::BadFrame),
    }
}

fn complete(buf: &[u8], total: usize) -> Result<Option<usize>, TurnError> {
    Ok((buf.len() >= total).then_some(total))
}

/// A ChannelData message's channel number and the range of its payload within `bytes`
/// (padding, if any, excluded). `None` if malformed.
pub(crate) fn parse_channel_data(bytes: &[u8]) -> Option<(u16, Range<usize>)> {
    let header = bytes.get(..CHANNEL_DATA_HEADER_LEN)?;
    let channel = u16::from_be_bytes([header[0], header[1]]);
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if !(CHANNEL_MIN..=CHANNEL_MAX).contains(&channel) {
        return None;
    }
    let end = CHANNEL_DATA_HEADER_LEN + len;
    // Trailing bytes are padding (streams) or tolerated (UDP), but at most 3 of them.
    if end > bytes.len() || bytes.len() - end > 3 {
        return None;
    }
    Some((channel, CHANNEL_DATA_HEADER_LEN..end))
}

/// Writes the 4-byte ChannelData header for a `payload_len`-byte payload on `channel`: what
/// the shell prepends to a peer datagram on the fast path. `None` if the payload is too long
/// for the 16-bit length field.
pub fn channel_data_header(channel: u16, payload_len: usize) -> Option<[u8; 4]> {
    let len = u16::try_from(payload_len).ok()?;
    let [c0, c1] = channel.to_be_bytes();
    let [l0, l1] = len.to_be_bytes();
    Some([c0, c1, l0, l1])
}

/// Padding (0..=3 zero bytes) a ChannelData frame of this payload length needs on TCP/TLS.
pub fn channel_data_padding(payload_len: usize) -> usize {
    payload_len.next_multiple_of(4) - payload_len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_frames() {
        assert_eq!(frame_len(&[]), Ok(None));
        assert_eq!(frame_len(&[0x40, 0x00, 0x00]), Ok(None));
        // ChannelData with 5 bytes of payload is padded to 8 on a stream.
        let mut cd = vec![0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0];
        assert_eq!(frame_len(&cd), Ok(None));
        cd.push(0);
        assert_eq!(frame_len(&cd), Ok(Some(12)));
        cd.extend_from_slice(&[0x40, 0x01]);
        assert_eq!(frame_len(&cd), Ok(Some(12)));
        // STUN header with no attributes.
        let mut stun = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42];
        assert_eq!(frame_len(&stun), Ok(None));
        stun.extend_from_slice(&[0; 12]);
        assert_eq!(frame_len(&stun), Ok(Some(20)));
        // Wrong cookie, odd length, neither kind.
        assert_eq!(
            frame_len(&[0, 1, 0, 0, 1, 2, 3, 4]),
            Err(TurnError::BadFrame)
        );
        assert_eq!(frame_len(&[0, 1, 0, 3]), Err(TurnError::BadFrame));
        assert_eq!(frame_len(&[0x80]), Err(TurnError::BadFrame));
        assert_eq!(frame_len(&[0xC0, 0, 0, 0]), Err(TurnError::BadFrame));
    }

    #[test]
    fn channel_data() {
        assert_eq!(
            parse_channel_data(&[0x40, 0x00, 0x00, 0x02, 9, 9]),
            Some((0x4000, 4..6))
        );
        assert_eq!(
            parse_channel_data(&[0x40, 0x00, 0x00, 0x02, 9, 9, 0, 0]),
            Some((0x4000, 4..6))
        );
        assert_eq!(parse_channel_data(&[0x40, 0x00, 0x00, 0x03, 9, 9]), None);
        assert_eq!(
            parse_channel_data(&[0x40, 0x00, 0x00, 0x00, 0, 0, 0, 0]),
            None
        );
        assert_eq!(parse_channel_data(&[0x80, 0x00, 0x00, 0x00]), None);
        assert_eq!(parse_channel_data(&[0x40, 0x00]), None);
        assert_eq!(
            channel_data_header(0x4001, 258),
            Some([0x40, 0x01, 0x01, 0x02])
        );
        assert_eq!(channel_data_header(0x4001, 70_000), None);
        assert_eq!(channel_data_padding(5), 3);
        assert_eq!(channel_data_padding(8), 0);
    }
}
