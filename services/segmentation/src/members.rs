//! The latest run's members of a tenant, kept in memory by the process that ran it: an
//! incremental run needs the stored segment, state, R, F and M of the customers it
//! rescores, and reading them from the chunks means reading every chunk (a 1 % change
//! touches them all). The cache is only used when the tenant's latest run in the
//! database is the one it was built from, so another replica's run (or a restart) only
//! costs one read of the chunks. About 60 bytes per customer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::scores::StoredScore;

/// What a stored score counts for in summaries and change events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    /// Index in the tenant's segment lookup; `None` for prospects.
    pub(crate) segment: Option<u16>,
    pub(crate) state: i32,
    pub(crate) r: u8,
    pub(crate) f: u8,
    pub(crate) monetary_minor: i64,
}

impl Member {
    pub(crate) fn of(segment: Option<u16>, score: &StoredScore) -> Self {
        Self {
            segment,
            state: score.state,
            r: score.r as u8,
            f: score.f as u8,
            monetary_minor: score.monetary_minor,
        }
    }
}

/// A run's members: the full run's, sorted, with later incremental runs' over them.
#[derive(Debug, Default)]
pub(crate) struct RunMembers {
    /// The run these members are the result of.
    pub(crate) recompute_id: String,
    base: Vec<(Box<str>, Member)>,
    /// Rescored (`Some`) or erased (`None`) since the full run.
    overlay: HashMap<Box<str>, Option<Member>>,
}

impl RunMembers {
    /// The members of a full run, sorted by customer id.
    pub(crate) fn full(recompute_id: String, base: Vec<(Box<str>, Member)>) -> Self {
        Self {
            recompute_id,
            base,
            overlay: HashMap::new(),
        }
    }

    /// A customer's member record, if they are one.
    pub(crate) fn get(&self, customer_id: &str) -> Option<Member> {
        if let Some(patched) = self.overlay.get(customer_id) {
            return *patched;
        }
        self.base
            .binary_search_by(|(id, _)| id.as_ref().cmp(customer_id))
            .ok()
            .map(|i| self.base[i].1)
    }
}

/// The members of each tenant's latest run that this process knows.
#[derive(Debug, Clone, Default)]
pub(crate) struct MemberCache {
    tenants: Arc<Mutex<HashMap<String, Arc<Mutex<RunMembers>>>>>,
}

impl MemberCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Mutex<RunMembers>>>> {
        self.tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The tenant's members if they are those of run `recompute_id`.
    pub(crate) fn of_run(
        &self,
        tenant: &str,
        recompute_id: &str,
    ) -> Option<Arc<Mutex<RunMembers>>> {
        let members = self.lock().get(tenant).cloned()?;
        let current = members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .recompute_id
            == recompute_id;
        current.then_some(members)
    }

    /// Keeps a full run's members.
    pub(crate) fn put(&self, tenant: &str, members: RunMembers) {
        self.lock()
            .insert(tenant.to_owned(), Arc::new(Mutex::new(members)));
    }

    /// Forgets a tenant (a run whose members were not kept, e.g. a backtest).
    pub(crate) fn forget(&self, tenant: &str) {
        self.lock().remove(tenant);
    }

    /// Moves the tenant's members from run `from` to incremental run `to`; forgets them
    /// when they were not `from`'s.
    pub(crate) fn patch(
        &self,
        tenant: &str,
        from: &str,
        to: &str,
        changes: impl IntoIterator<Item = (Box<str>, Option<Member>)>,
    ) {
        let Some(members) = self.of_run(tenant, from) else {
            self.forget(tenant);
            return;
        };
        let mut members = members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        members.overlay.extend(changes);
        to.clone_into(&mut members.recompute_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(state: i32) -> Member {
        Member {
            segment: Some(1),
            state,
            r: 3,
            f: 2,
            monetary_minor: 100,
        }
    }

    #[test]
    fn patches_stand_over_the_full_run_and_runs_must_match() {
        let cache = MemberCache::default();
        cache.put(
            "t",
            RunMembers::full(
                "run-1".into(),
                vec![("a".into(), member(1)), ("b".into(), member(2))],
            ),
        );
        assert!(cache.of_run("t", "run-0").is_none());
        cache.patch(
            "t",
            "run-1",
            "run-2",
            [("b".into(), None), ("c".into(), Some(member(3)))],
        );
        let members = cache.of_run("t", "run-2").unwrap();
        let members = members.lock().unwrap();
        assert_eq!(members.get("a"), Some(member(1)));
        assert_eq!(members.get("b"), None);
        assert_eq!(members.get("c"), Some(member(3)));
        drop(members);
        // A patch from a run the cache does not hold forgets the tenant.
        cache.patch("t", "run-1", "run-3", []);
        assert!(cache.of_run("t", "run-2").is_none());
    }
}
