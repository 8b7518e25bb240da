//! The position of an event in its source's feed. Opaque to clients: `"<tx>.<seq>"`.

use std::fmt;
use std::str::FromStr;

/// A feed position: events are ordered by (transaction id, sequence number). SQLite's
/// transaction id is always 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// Transaction id (PostgreSQL `xid8`), 0 on SQLite.
    pub tx_id: i64,
    /// Sequence number of the row.
    pub seq: i64,
}

/// A cursor string that is not one.
#[derive(Debug, thiserror::Error)]
#[error("malformed cursor {0:?}")]
pub struct MalformedCursor(pub String);

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.tx_id, self.seq)
    }
}

impl FromStr for Cursor {
    type Err = MalformedCursor;

    /// Parses a cursor; the empty string is the start of the feed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Ok(Cursor::default());
        }
        let (tx, seq) = s
            .split_once('.')
            .ok_or_else(|| MalformedCursor(s.to_owned()))?;
        let parse = |v: &str| v.parse::<i64>().ok().filter(|n| *n >= 0);
        match (parse(tx), parse(seq)) {
            (Some(tx_id), Some(seq)) => Ok(Cursor { tx_id, seq }),
            _ => Err(MalformedCursor(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_orders_by_transaction_then_sequence() {
        let c: Cursor = "12.7".parse().unwrap();
        assert_eq!(c.to_string(), "12.7");
        assert_eq!("".parse::<Cursor>().unwrap(), Cursor::default());
        assert!(Cursor { tx_id: 1, seq: 9 } < Cursor { tx_id: 2, seq: 1 });
        assert!("x.1".parse::<Cursor>().is_err());
        assert!("-1.1".parse::<Cursor>().is_err());
    }
}
