//! Close frame payloads (RFC 6455 §5.5.1, §7.4).

use super::{utf8, Error};

/// Whether a peer may put `code` in a close frame (§7.4.1, §7.4.2).
///
/// 1004 is reserved, 1005/1006/1015 must never be sent, 1012-2999 are for
/// future protocol revisions and 0-999 are unused; 3000-4999 belong to
/// libraries and applications.
pub const fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// Validate a received close payload: empty, or a valid code followed by a
/// UTF-8 reason. Returns the code, if any.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<u16>, Error> {
    match payload {
        [] => Ok(None),
        [_] => Err(Error::CloseTooShort),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(Error::InvalidCloseCode(code));
            }
            utf8::validate(reason)?;
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_code_validity_follows_section_7_4() {
        let valid: Vec<u16> = (0..=u16::MAX).filter(|&c| is_valid_close_code(c)).collect();
        assert_eq!(valid.len(), 4 + 5 + 2000);
        for c in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(is_valid_close_code(c), "{c}");
        }
        for c in [
            0, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_close_code(c), "{c}");
        }
    }

    #[test]
    fn close_code_1005_on_the_wire_is_a_protocol_error_section_7_4_1() {
        assert_eq!(
            parse_close_payload(&[0x03, 0xED]),
            Err(Error::InvalidCloseCode(1005))
        );
    }

    #[test]
    fn one_byte_close_payload_is_a_protocol_error_section_5_5_1() {
        assert_eq!(parse_close_payload(&[0x03]), Err(Error::CloseTooShort));
    }

    #[test]
    fn empty_close_and_code_with_reason_are_accepted_section_5_5_1() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
        assert_eq!(parse_close_payload(&[0x03, 0xE8]), Ok(Some(1000)));
        let mut p = vec![0x0F, 0xA0];
        p.extend_from_slice("κόσμε".as_bytes());
        assert_eq!(parse_close_payload(&p), Ok(Some(4000)));
    }

    #[test]
    fn close_reason_must_be_utf8_section_5_5_1() {
        assert_eq!(
            parse_close_payload(&[0x03, 0xE8, 0xCE, 0xBA, 0xE1]),
            Err(Error::InvalidUtf8)
        );
        assert_eq!(
            parse_close_payload(&[0x03, 0xE8, 0xFF]),
            Err(Error::InvalidUtf8)
        );
    }
}
