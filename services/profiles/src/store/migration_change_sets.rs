//! Which customers' facts changed is kept in change sets, one row per write listing the
//! customers it wrote (`facts_change_sets`), instead of an index on each facts row's change
//! position. Every facts write changed that position, and with it the index, so PostgreSQL
//! could never update a facts row in place on its page (a HOT update): each write added a
//! new entry to both of the table's indexes and left a dead version that later reads and
//! writes walked past. Now no index covers a column a write changes. The facts rows keep
//! their position (the set that last listed them): `StreamFacts` serves a customer at that
//! set only.
//!
//! Existing rows become sets of the customers at each position (one each, as positions
//! were unique), so a cursor handed out before reads on where it stood.

use sea_orm::DbBackend;
use sea_orm_migration::prelude::*;

#[derive(Debug)]
pub(crate) struct FactsChangeSets;

impl MigrationName for FactsChangeSets {
    fn name(&self) -> &str {
        "m20261206_300000_facts_change_sets"
    }
}

// async_trait's expansion needs the elided lifetime.
#[allow(elided_lifetimes_in_paths)]
#[sea_orm_migration::async_trait::async_trait]
impl MigrationTrait for FactsChangeSets {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let statements: &[&str] = match db.get_database_backend() {
            DbBackend::Sqlite => &[
                "CREATE TABLE facts_change_sets (
                    tenant_id TEXT NOT NULL,
                    tx_id BIGINT NOT NULL,
                    change_seq BIGINT NOT NULL,
                    customer_ids TEXT NOT NULL,
                    PRIMARY KEY (tenant_id, tx_id, change_seq))",
                "INSERT INTO facts_change_sets (tenant_id, tx_id, change_seq, customer_ids) \
                 SELECT tenant_id, tx_id, change_seq, group_concat(customer_id, char(10)) FROM facts \
                 GROUP BY tenant_id, tx_id, change_seq",
                "DROP INDEX facts_changes",
            ],
            _ => &[
                "CREATE TABLE facts_change_sets (
                    tenant_id TEXT COLLATE \"C\" NOT NULL,
                    tx_id BIGINT NOT NULL,
                    change_seq BIGINT NOT NULL,
                    customer_ids TEXT NOT NULL,
                    PRIMARY KEY (tenant_id, tx_id, change_seq))",
                "INSERT INTO facts_change_sets (tenant_id, tx_id, change_seq, customer_ids) \
                 SELECT tenant_id, tx_id, change_seq, string_agg(customer_id, E'\\n' ORDER BY customer_id) FROM facts \
                 GROUP BY tenant_id, tx_id, change_seq",
                "DROP INDEX facts_changes",
                // Room on each page for a row's next version, so an update stays on its page.
                "ALTER TABLE facts SET (fillfactor = 70)",
            ],
        };
        // The sets must be taken from the rows they describe.
        winback_platform::db::execute_in_one_transaction(db, statements).await
    }

    /// Gives each facts row a position of its own again (rows written together share
    /// their set's), in the order they stood, after every position handed out: a consumer
    /// reads every customer once more rather than miss one.
    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let statements: &[&str] = match db.get_database_backend() {
            DbBackend::Sqlite => &[
                "UPDATE facts SET change_seq = (SELECT value FROM change_counter WHERE name = 'facts') + r.n \
                 FROM (SELECT tenant_id AS t, customer_id AS c, \
                       row_number() OVER (ORDER BY tx_id, change_seq, customer_id) AS n FROM facts) AS r \
                 WHERE facts.tenant_id = r.t AND facts.customer_id = r.c",
                "UPDATE change_counter SET value = value + (SELECT COUNT(*) FROM facts) WHERE name = 'facts'",
                "CREATE INDEX facts_changes ON facts (tenant_id, tx_id, change_seq)",
                "DROP TABLE facts_change_sets",
            ],
            _ => &[
                "UPDATE facts SET change_seq = b.base + r.n \
                 FROM (SELECT tenant_id AS t, customer_id AS c, \
                       row_number() OVER (ORDER BY tx_id, change_seq, customer_id) AS n FROM facts) AS r, \
                      (SELECT GREATEST(nextval('facts_change_seq'), (SELECT COALESCE(MAX(change_seq), 0) FROM facts)) AS base) AS b \
                 WHERE facts.tenant_id = r.t AND facts.customer_id = r.c",
                "SELECT setval('facts_change_seq', GREATEST((SELECT COALESCE(MAX(change_seq), 0) FROM facts), \
                 (SELECT last_value FROM facts_change_seq)))",
                "CREATE INDEX facts_changes ON facts (tenant_id, tx_id, change_seq)",
                "DROP TABLE facts_change_sets",
                "ALTER TABLE facts RESET (fillfactor)",
            ],
        };
        winback_platform::db::execute_in_one_transaction(db, statements).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    use sea_orm_migration::MigratorTrait;
    use winback_platform::events::Cursor;
    use winback_platform::testing::TestDatabase;
    use winback_proto::profiles::CustomerFacts;

    use crate::facts_frame::{framed_facts, unframed};
    use crate::store::{Migrator, rows};

    async fn strings(db: &impl ConnectionTrait, sql: &str) -> Vec<String> {
        db.query_all_raw(Statement::from_string(db.get_database_backend(), sql))
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<String>("", "s").unwrap())
            .collect()
    }

    /// The customers a changed-since read from `after` serves, in order.
    async fn changed(db: &impl ConnectionTrait, after: Cursor) -> Vec<String> {
        rows::facts_changed(db, "t", after, 100)
            .await
            .unwrap()
            .framed
            .iter()
            .map(|f| {
                let message = unframed(f).unwrap();
                prost::Message::decode(message)
                    .map(|f: CustomerFacts| f.customer_id)
                    .unwrap()
            })
            .collect()
    }

    winback_platform::db_test!(
        facts_positions_become_change_sets_and_back,
        |db| async move {
            let db: &TestDatabase = db;
            let conn = winback_platform::db::connect(&db.url("profiles"), "profiles", 2)
                .await
                .unwrap();
            Migrator::up(&conn, Some(3)).await.unwrap();
            // Rows as the index kept them: a position each.
            for (seq, id) in [(1, "c0"), (2, "c1"), (3, "c2")] {
                let facts = CustomerFacts {
                    customer_id: id.into(),
                    ..Default::default()
                };
                conn.execute_raw(winback_platform::db::statement(
                    conn.get_database_backend(),
                    "INSERT INTO facts (tenant_id, customer_id, tx_id, change_seq, state, framed) \
                 VALUES ('t', $1, 0, $2, $3, $4)",
                    vec![
                        id.into(),
                        i64::from(seq).into(),
                        Vec::<u8>::new().into(),
                        framed_facts(&facts).into(),
                    ],
                ))
                .await
                .unwrap();
            }
            if conn.get_database_backend() == DbBackend::Sqlite {
                conn.execute_unprepared("UPDATE change_counter SET value = 3 WHERE name = 'facts'")
                    .await
                    .unwrap();
            }
            Migrator::up(&conn, None).await.unwrap();

            assert_eq!(
                strings(
                    &conn,
                    "SELECT customer_ids AS s FROM facts_change_sets ORDER BY change_seq"
                )
                .await,
                vec!["c0", "c1", "c2"]
            );
            // A cursor handed out before (the two-part form) reads on where it stood.
            assert_eq!(
                changed(&conn, "0.1".parse().unwrap()).await,
                vec!["c1", "c2"]
            );
            assert_eq!(
                changed(&conn, Cursor::default()).await,
                vec!["c0", "c1", "c2"]
            );

            // Back: a position per row again, after every one handed out, in the order they
            // stood; the index is there.
            // (The first-day migration after it has nothing to undo.)
            Migrator::down(&conn, Some(2)).await.unwrap();
            let positions = strings(
            &conn,
            "SELECT customer_id || ':' || CAST(change_seq AS TEXT) AS s FROM facts ORDER BY change_seq",
        )
        .await;
            assert_eq!(positions.len(), 3);
            let seqs: Vec<i64> = positions
                .iter()
                .map(|p| p.split(':').nth(1).unwrap().parse().unwrap())
                .collect();
            assert!(
                seqs[0] > 3 && seqs.windows(2).all(|w| w[0] < w[1]),
                "{positions:?}"
            );
            assert!(positions[0].starts_with("c0:") && positions[2].starts_with("c2:"));
            let index = match conn.get_database_backend() {
                DbBackend::Sqlite => {
                    "SELECT name AS s FROM sqlite_master WHERE type = 'index' AND name = 'facts_changes'"
                }
                _ => "SELECT indexname AS s FROM pg_indexes WHERE indexname = 'facts_changes'",
            };
            assert_eq!(strings(&conn, index).await, vec!["facts_changes"]);

            Migrator::up(&conn, None).await.unwrap();
            assert_eq!(
                changed(&conn, Cursor::default()).await,
                vec!["c0", "c1", "c2"]
            );
            conn.close().await.unwrap();
        }
    );
}
