//! How many SMS a text costs: GSM-7 fits 160 characters in one message and 153 per part
//! of a longer one (the rest is the concatenation header); anything outside GSM-7 (any
//! Cyrillic letter, emoji) makes the whole message UCS-2: 70, and 67 per part.

/// The GSM 03.38 basic character set.
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// The extension table: each costs two septets (escape + character).
const GSM7_EXTENSION: &str = "^{}\\[~]|€\u{000C}";

/// Segments and encoding of an SMS text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SmsSize {
    /// Messages the provider bills.
    pub(crate) segments: u32,
    /// True when the text needs UCS-2.
    pub(crate) unicode: bool,
}

/// The size of `text` as an SMS.
pub(crate) fn size(text: &str) -> SmsSize {
    let mut septets = 0u32;
    let mut gsm = true;
    for c in text.chars() {
        if GSM7_BASIC.contains(c) {
            septets += 1;
        } else if GSM7_EXTENSION.contains(c) {
            septets += 2;
        } else {
            gsm = false;
            break;
        }
    }
    if gsm {
        return SmsSize {
            segments: parts(septets, 160, 153),
            unicode: false,
        };
    }
    let units = text.encode_utf16().count() as u32;
    SmsSize {
        segments: parts(units, 70, 67),
        unicode: true,
    }
}

fn parts(length: u32, single: u32, per_part: u32) -> u32 {
    if length == 0 {
        0
    } else if length <= single {
        1
    } else {
        length.div_ceil(per_part)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm_texts_fit_160_then_153_per_part() {
        assert_eq!(
            size(&"a".repeat(160)),
            SmsSize {
                segments: 1,
                unicode: false
            }
        );
        assert_eq!(size(&"a".repeat(161)).segments, 2);
        assert_eq!(size(&"a".repeat(306)).segments, 2);
        assert_eq!(size(&"a".repeat(307)).segments, 3);
        assert_eq!(size("").segments, 0);
    }

    #[test]
    fn extension_characters_cost_two_septets() {
        assert_eq!(
            size(&"€".repeat(80)),
            SmsSize {
                segments: 1,
                unicode: false
            }
        );
        assert_eq!(size(&"€".repeat(81)).segments, 2);
    }

    #[test]
    fn one_cyrillic_letter_makes_the_message_ucs2() {
        let text = format!("{}ы", "a".repeat(69));
        assert_eq!(
            size(&text),
            SmsSize {
                segments: 1,
                unicode: true
            }
        );
        let text = format!("{}ы", "a".repeat(70));
        assert_eq!(size(&text).segments, 2);
        assert_eq!(size(&"ж".repeat(134)).segments, 2);
        assert_eq!(size(&"ж".repeat(135)).segments, 3);
        // An emoji is two UTF-16 units.
        assert_eq!(size(&"🙂".repeat(35)).segments, 1);
        assert_eq!(size(&"🙂".repeat(36)).segments, 2);
    }
}
