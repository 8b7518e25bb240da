//! Coupon codes: random from the operating system's CSPRNG, over an alphabet without
//! look-alikes, with a check character that rejects typos before any lookup.
//!
//! A code is `[PREFIX-]XXXX-XXXX-XXXC`: an optional tenant prefix (0–6 alphabet
//! characters), eleven random characters (31¹¹ ≈ 2⁵⁴, so ≥ 50 bits) and a check
//! character: Σ (position + 1) · value mod 31. Because 31 is prime and the weights differ,
//! it catches every single wrong character and every swap of two characters (Luhn mod N
//! would miss some swaps). Hyphens, spaces and case are ignored when a code is read.

use std::fmt;

/// The code alphabet: digits and capitals without the look-alikes 0/O and 1/I/L — 31
/// characters, a prime, which the check character needs.
pub(crate) const ALPHABET: &[u8; 31] = b"23456789ABCDEFGHJKMNPQRSTUVWXYZ";
const N: usize = ALPHABET.len();

/// Random characters per code.
pub(crate) const RANDOM_CHARS: usize = 11;

/// Longest prefix.
pub(crate) const MAX_PREFIX: usize = 6;

/// Why a typed code is not a code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MalformedCode {
    /// A character no code contains.
    #[error("contains {0:?}, which no code contains")]
    Character(char),
    /// Wrong length.
    #[error("has {0} characters; codes have {min}–{max}", min = RANDOM_CHARS + 1, max = RANDOM_CHARS + 1 + MAX_PREFIX)]
    Length(usize),
    /// The check character does not match: a typo.
    #[error("check character does not match (a typo?)")]
    Check,
}

fn index_of(c: u8) -> Option<usize> {
    ALPHABET.iter().position(|&a| a == c)
}

/// The check character of `chars` (alphabet indices): Σ (i + 1) · cᵢ mod 31.
fn check_char(chars: &[usize]) -> usize {
    chars
        .iter()
        .enumerate()
        .map(|(i, &c)| (i + 1) * c)
        .sum::<usize>()
        % N
}

/// Checks a prefix: 0–6 alphabet characters (case-insensitive).
pub(crate) fn normalize_prefix(prefix: &str) -> Result<String, MalformedCode> {
    let upper = prefix.trim().to_ascii_uppercase();
    if upper.len() > MAX_PREFIX {
        return Err(MalformedCode::Length(upper.len()));
    }
    if let Some(bad) = upper
        .chars()
        .find(|c| !c.is_ascii() || index_of(*c as u8).is_none())
    {
        return Err(MalformedCode::Character(bad));
    }
    Ok(upper)
}

/// A well-formed code: prefix length and the canonical characters (no separators).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Code {
    canonical: String,
    prefix_len: usize,
}

impl Code {
    /// A new random code with `prefix` (from [`normalize_prefix`]; other characters are
    /// left out).
    pub(crate) fn generate(prefix: &str) -> Result<Self, aws_lc_rs::error::Unspecified> {
        let mut chars: Vec<usize> = prefix.bytes().filter_map(index_of).collect();
        let prefix_len = chars.len();
        let mut buffer = [0u8; 32];
        let mut drawn = 0;
        while drawn < RANDOM_CHARS {
            aws_lc_rs::rand::fill(&mut buffer)?;
            for &b in &buffer {
                // Rejection sampling keeps every character equally likely (248 = 8 × 31).
                if usize::from(b) < 248 && drawn < RANDOM_CHARS {
                    chars.push(usize::from(b) % N);
                    drawn += 1;
                }
            }
        }
        chars.push(check_char(&chars));
        Ok(Self {
            canonical: chars.iter().map(|&i| ALPHABET[i] as char).collect(),
            prefix_len,
        })
    }

    /// Reads a typed code: case, spaces and hyphens ignored; the check character verified.
    /// The check covers prefix and body, so no lookup is needed to reject a typo.
    pub(crate) fn parse(typed: &str) -> Result<Self, MalformedCode> {
        let mut chars = Vec::with_capacity(typed.len());
        for c in typed.chars() {
            if c == '-' || c.is_whitespace() {
                continue;
            }
            let upper = c.to_ascii_uppercase();
            match upper.is_ascii().then(|| index_of(upper as u8)).flatten() {
                Some(i) => chars.push(i),
                None => return Err(MalformedCode::Character(c)),
            }
        }
        let shortest = RANDOM_CHARS + 1;
        if !(shortest..=shortest + MAX_PREFIX).contains(&chars.len()) {
            return Err(MalformedCode::Length(chars.len()));
        }
        let (body, check) = chars.split_at(chars.len() - 1);
        if check_char(body) != check[0] {
            return Err(MalformedCode::Check);
        }
        Ok(Self {
            canonical: chars.iter().map(|&i| ALPHABET[i] as char).collect(),
            prefix_len: chars.len() - shortest,
        })
    }

    /// The code without separators: what is stored and looked up.
    pub(crate) fn canonical(&self) -> &str {
        &self.canonical
    }
}

impl fmt::Display for Code {
    /// `PREFIX-XXXX-XXXX-XXXC`: groups of four after the prefix, for people.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (prefix, rest) = self.canonical.split_at(self.prefix_len);
        if !prefix.is_empty() {
            write!(f, "{prefix}-")?;
        }
        for (i, chunk) in rest.as_bytes().chunks(4).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(std::str::from_utf8(chunk).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn a_hundred_thousand_codes_are_distinct_and_free_of_look_alikes() {
        let mut seen = HashSet::new();
        for _ in 0..100_000 {
            let code = Code::generate("BEAU").unwrap();
            assert!(
                !code.canonical().contains(['0', 'O', '1', 'I', 'L']),
                "{code}"
            );
            assert!(code.canonical().starts_with("BEAU"));
            assert!(seen.insert(code.canonical().to_owned()), "duplicate {code}");
        }
        // ≥ 50 bits of entropy in the random part.
        assert!((RANDOM_CHARS as f64) * (N as f64).log2() >= 50.0);
    }

    #[test]
    fn a_printed_code_reads_back_in_any_case_and_spacing() {
        let code = Code::generate("VPN").unwrap();
        let printed = code.to_string();
        assert_eq!(printed.len(), 3 + 1 + 12 + 2);
        assert_eq!(Code::parse(&printed).unwrap(), code);
        let sloppy = printed.to_lowercase().replace('-', " ");
        assert_eq!(Code::parse(&sloppy).unwrap(), code);
        let plain = Code::generate("").unwrap();
        assert_eq!(Code::parse(&plain.to_string()).unwrap(), plain);
    }

    #[test]
    fn every_single_typo_and_swap_is_caught_by_the_check_character() {
        for _ in 0..200 {
            let code = Code::generate("").unwrap();
            let chars: Vec<u8> = code.canonical().bytes().collect();
            for i in 0..chars.len() {
                for &other in ALPHABET {
                    if other == chars[i] {
                        continue;
                    }
                    let mut typo = chars.clone();
                    typo[i] = other;
                    let typed = String::from_utf8(typo).unwrap();
                    assert_eq!(Code::parse(&typed), Err(MalformedCode::Check), "{typed}");
                }
                for j in i + 1..chars.len() {
                    if chars[i] != chars[j] {
                        let mut swapped = chars.clone();
                        swapped.swap(i, j);
                        let typed = String::from_utf8(swapped).unwrap();
                        assert_eq!(Code::parse(&typed), Err(MalformedCode::Check), "{typed}");
                    }
                }
            }
        }
    }

    #[test]
    fn malformed_codes_say_what_is_wrong() {
        assert_eq!(Code::parse("ABC0-DEFG"), Err(MalformedCode::Character('0')));
        assert_eq!(Code::parse("ABCD"), Err(MalformedCode::Length(4)));
        assert_eq!(normalize_prefix("beau").unwrap(), "BEAU");
        assert_eq!(
            normalize_prefix("SAVE01"),
            Err(MalformedCode::Character('0'))
        );
        assert_eq!(normalize_prefix("TOOLONGX"), Err(MalformedCode::Length(8)));
    }
}
