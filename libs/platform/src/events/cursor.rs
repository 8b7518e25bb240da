//! The position of an event in its source's feed. Opaque to clients: `"<tx>.<seq>"` for
//! the first (or only) event of an outbox row, `"<tx>.<seq>.<index>"` for a later one.

use std::fmt;
use std::str::FromStr;

/// A feed position: events are ordered by (transaction id, sequence number of their outbox
/// row, index within that row). SQLite's transaction id is always 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// Transaction id (PostgreSQL `xid8`), 0 on SQLite.
    pub tx_id: i64,
    /// Sequence number of the row.
    pub seq: i64,
    /// The event's place among the row's events (0 for a row of one event).
    pub index: i64,
}

/// A cursor string that is not one.
#[derive(Debug, thiserror::Error)]
#[error("malformed cursor {0:?}")]
pub struct MalformedCursor(pub String);

impl Cursor {
    /// The first event of row (`tx_id`, `seq`).
    pub fn row(tx_id: i64, seq: i64) -> Self {
        Self {
            tx_id,
            seq,
            index: 0,
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A row's first event keeps the two-part form cursors had before rows held many
        // events, so a stored cursor reads the same either way.
        if self.index == 0 {
            write!(f, "{}.{}", self.tx_id, self.seq)
        } else {
            write!(f, "{}.{}.{}", self.tx_id, self.seq, self.index)
        }
    }
}

impl FromStr for Cursor {
    type Err = MalformedCursor;

    /// Parses a cursor; the empty string is the start of the feed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Ok(Cursor::default());
        }
        let malformed = || MalformedCursor(s.to_owned());
        let parse = |v: &str| v.parse::<i64>().ok().filter(|n| *n >= 0);
        let mut parts = s.split('.').map(parse);
        let (Some(Some(tx_id)), Some(Some(seq))) = (parts.next(), parts.next()) else {
            return Err(malformed());
        };
        let index = match parts.next() {
            None => 0,
            Some(Some(index)) => index,
            Some(None) => return Err(malformed()),
        };
        if parts.next().is_some() {
            return Err(malformed());
        }
        Ok(Cursor { tx_id, seq, index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_orders_by_transaction_then_sequence_then_index() {
        let c: Cursor = "12.7".parse().unwrap();
        assert_eq!(c, Cursor::row(12, 7));
        assert_eq!(c.to_string(), "12.7");
        let later: Cursor = "12.7.3".parse().unwrap();
        assert_eq!(later.to_string(), "12.7.3");
        assert!(c < later && later < Cursor::row(12, 8));
        assert_eq!("".parse::<Cursor>().unwrap(), Cursor::default());
        assert!(Cursor::row(1, 9) < Cursor::row(2, 1));
        for bad in ["x.1", "-1.1", "1", "1.2.x", "1.2.3.4", "1.2.", "1.2.-3"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
    }
}
