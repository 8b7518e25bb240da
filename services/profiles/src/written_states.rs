//! The facts states an order stream wrote, kept between its groups so that the next group
//! need not read them back: at 10⁴ customers most of a group's customers were in the group
//! before, and reading their states (and decoding them) was a fifth of the ingest.
//!
//! A kept state is used only while it is still what the database holds:
//! * PostgreSQL: the group's lookup still locks and reads every customer's facts row, but a
//!   row still carrying one of the stream's transaction ids comes without its state;
//! * SQLite (one writer): the change counter every facts write advances must be where the
//!   stream's last write left it, otherwise everything kept is dropped.

use std::collections::HashMap;

use sea_orm::{ConnectionTrait, DbBackend, DbErr};

use crate::domain::facts::FactsState;
use crate::store::rows;

/// At most this many states are kept (tens of MB); past it the stream starts afresh.
const MAX_STATES: usize = 50_000;
/// At most this many PostgreSQL transactions are remembered (they go into the lookup).
const MAX_MARKS: usize = 64;

/// The states a stream wrote and the marks that prove them current.
#[derive(Debug, Default)]
pub(crate) struct WrittenStates {
    states: HashMap<String, FactsState>,
    /// PostgreSQL: the stream's transactions; SQLite: the change counter after its last
    /// write.
    marks: Vec<i64>,
}

/// The facts states of a group's known customers.
pub(crate) type States = HashMap<String, FactsState>;

impl WrittenStates {
    /// Looks up `ids` (locking their facts rows on PostgreSQL), taking each state from
    /// what the stream kept where that is still current.
    pub(crate) async fn look_up(
        &mut self,
        conn: &impl ConnectionTrait,
        tenant: &str,
        ids: Vec<String>,
    ) -> Result<States, DbErr> {
        let backend = conn.get_database_backend();
        let mut out = States::with_capacity(ids.len());
        let ids = if backend == DbBackend::Sqlite {
            if !self.states.is_empty()
                && self.marks.last() != Some(&rows::facts_write_mark(conn).await?)
            {
                self.forget();
            }
            // Kept customers were not erased (erased ones are not kept) and nobody has
            // written facts since: no need to read them.
            let (kept, rest): (Vec<String>, Vec<String>) =
                ids.into_iter().partition(|id| self.states.contains_key(id));
            for id in kept {
                if let Some(state) = self.states.remove(&id) {
                    out.insert(id, state);
                }
            }
            rest
        } else {
            ids
        };
        let known_writes = if backend == DbBackend::Postgres {
            self.marks.as_slice()
        } else {
            &[]
        };
        let found = rows::facts_states_except_known(conn, tenant, &ids, known_writes).await?;
        let mut missing = Vec::new();
        for (id, state) in found {
            match state.or_else(|| self.states.remove(&id)) {
                Some(state) => {
                    out.insert(id, state);
                }
                None => missing.push(id),
            }
        }
        // A row marked as the stream's whose state is not kept cannot happen (states and
        // marks are dropped together); read it rather than trust that.
        if !missing.is_empty() {
            out.extend(rows::facts_states(conn, tenant, &missing).await?);
        }
        Ok(out)
    }

    /// Keeps the group's states after its transaction, marked `mark`
    /// ([`rows::facts_write_mark`] read just before the commit), committed.
    pub(crate) fn keep(&mut self, backend: DbBackend, mark: i64, looked: States) {
        if self.states.len() + looked.len() > MAX_STATES || self.marks.len() >= MAX_MARKS {
            self.forget();
        }
        self.put_back(looked);
        // SQLite needs only the latest counter; PostgreSQL every transaction since the
        // states were first kept.
        if backend == DbBackend::Sqlite {
            self.marks.clear();
        }
        self.marks.push(mark);
    }

    /// Puts back the states of a group that wrote nothing (still current: the group's
    /// transaction held the customers).
    pub(crate) fn put_back(&mut self, looked: States) {
        self.states
            .extend(looked.into_iter().filter(|(_, state)| !state.erased));
    }

    fn forget(&mut self) {
        self.states.clear();
        self.marks.clear();
    }
}
