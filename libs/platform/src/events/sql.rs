//! Raw SQL shared by SQLite and PostgreSQL.

use sea_orm::{DbBackend, Statement, Value};

/// A statement written with PostgreSQL's `$n` placeholders, turned into SQLite's `?n` when
/// the backend is SQLite.
pub(crate) fn statement(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    let sql = match backend {
        DbBackend::Sqlite => sql.replace('$', "?"),
        _ => sql.to_owned(),
    };
    Statement::from_sql_and_values(backend, sql, values)
}
