//! The queries of the profiles service. One SQL text serves SQLite and PostgreSQL (`$n`
//! placeholders, `ON CONFLICT … DO UPDATE`); batches go in multi-row statements.

use std::collections::HashMap;

use sea_orm::sea_query::ArrayType;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, QueryResult, Statement, Value};
use winback_platform::db::{execute_all, multi_row_insert, statement};
use winback_platform::events::Cursor;

use prost::Message as _;

use crate::domain::facts::{FactsState, OrderFact};
use crate::facts_frame::{framed_facts, unframed};

/// Rows per multi-row statement (PostgreSQL allows 65,535 parameters, SQLite 32,766).
const ROWS_PER_STATEMENT: usize = 500;

/// `head VALUES (…), (…) tail` for each chunk of rows.
pub(crate) async fn insert_many(
    conn: &impl ConnectionTrait,
    head: &str,
    tail: &str,
    rows: Vec<Vec<Value>>,
) -> Result<(), DbErr> {
    let backend = conn.get_database_backend();
    let mut rows = rows.into_iter().peekable();
    let statements = std::iter::from_fn(|| {
        rows.peek()?;
        let mut stmt = multi_row_insert(backend, head, rows.by_ref().take(ROWS_PER_STATEMENT));
        if !tail.is_empty() {
            stmt.sql.push(' ');
            stmt.sql.push_str(tail);
        }
        Some(stmt)
    });
    execute_all(conn, statements).await
}

/// `$k, $k+1, …` for an IN list, starting after `offset` earlier parameters.
fn in_list(offset: usize, n: usize) -> String {
    (offset + 1..=offset + n)
        .map(|k| format!("${k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A PostgreSQL array parameter.
fn array<T: Into<Value>>(kind: ArrayType, items: Vec<T>) -> Value {
    Value::Array(
        kind,
        Some(Box::new(items.into_iter().map(Into::into).collect())),
    )
}

/// An order to store.
#[derive(Debug)]
pub(crate) struct NewOrder {
    pub(crate) order_id: String,
    pub(crate) customer_id: String,
    pub(crate) placed_at_us: i64,
    pub(crate) currency: String,
    pub(crate) total_minor: i64,
    pub(crate) store: String,
    pub(crate) coupon_code: String,
    /// Spend per category, as JSON.
    pub(crate) lines: String,
    pub(crate) fingerprint: String,
}

/// Orders per PostgreSQL statement: a group's first statement runs with nothing beside it,
/// so it should be quick to build; each one after is built while the one before runs.
const PG_ORDERS_PER_STATEMENT: usize = 10_000;

const ORDER_INSERT: &str = "INSERT INTO orders (tenant_id, order_id, customer_id, placed_at_us, currency, \
     total_minor, store, coupon_code, lines, fingerprint)";

/// The statements that store new orders, each built when the iterator reaches it: on
/// PostgreSQL statements of [`PG_ORDERS_PER_STATEMENT`] orders with a column array per
/// field (ten parameters for any number of orders, nothing to parse per row), on SQLite
/// multi-row inserts.
pub(crate) fn order_statements<'a>(
    backend: DbBackend,
    tenant: &'a str,
    orders: impl IntoIterator<Item = NewOrder, IntoIter: Send + 'a>,
) -> Box<dyn Iterator<Item = Statement> + Send + 'a> {
    let mut orders = orders.into_iter().peekable();
    if orders.peek().is_none() {
        return Box::new(std::iter::empty());
    }
    if backend != DbBackend::Postgres {
        let mut rows = orders
            .map(move |o| {
                vec![
                    tenant.into(),
                    o.order_id.into(),
                    o.customer_id.into(),
                    o.placed_at_us.into(),
                    o.currency.into(),
                    o.total_minor.into(),
                    o.store.into(),
                    o.coupon_code.into(),
                    o.lines.into(),
                    o.fingerprint.into(),
                ]
            })
            .peekable();
        return Box::new(std::iter::from_fn(move || {
            rows.peek()?;
            Some(multi_row_insert(
                backend,
                ORDER_INSERT,
                rows.by_ref().take(ROWS_PER_STATEMENT),
            ))
        }));
    }
    Box::new(std::iter::from_fn(move || {
        orders.peek()?;
        let orders = orders.by_ref().take(PG_ORDERS_PER_STATEMENT);
        let n = orders.size_hint().0;
        let (mut ids, mut customers, mut placed, mut currencies, mut totals) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut stores, mut coupons, mut lines, mut fingerprints) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for o in orders {
            ids.push(o.order_id);
            customers.push(o.customer_id);
            placed.push(o.placed_at_us);
            currencies.push(o.currency);
            totals.push(o.total_minor);
            stores.push(o.store);
            coupons.push(o.coupon_code);
            lines.push(o.lines);
            fingerprints.push(o.fingerprint);
        }
        let sql = format!(
            "{ORDER_INSERT} SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::bigint[], $5::text[], \
             $6::bigint[], $7::text[], $8::text[], $9::text[], $10::text[])"
        );
        let values = vec![
            tenant.into(),
            array(ArrayType::String, ids),
            array(ArrayType::String, customers),
            array(ArrayType::BigInt, placed),
            array(ArrayType::String, currencies),
            array(ArrayType::BigInt, totals),
            array(ArrayType::String, stores),
            array(ArrayType::String, coupons),
            array(ArrayType::String, lines),
            array(ArrayType::String, fingerprints),
        ];
        Some(statement(backend, &sql, values))
    }))
}

/// Rows whose key is in `keys`. `sql_before_in` ends with `<column> IN`. PostgreSQL gets
/// one array parameter (`IN (SELECT unnest($2))`): planned once and cheap, where a 1000-literal IN list
/// cost 30–65 ms of planning per lookup at 10⁶ rows. SQLite gets IN lists a chunk at a time.
async fn select_in(
    conn: &impl ConnectionTrait,
    sql_before_in: &str,
    tenant: &str,
    keys: &[String],
) -> Result<Vec<QueryResult>, DbErr> {
    select_in_then(conn, sql_before_in, "", tenant, keys, Vec::new()).await
}

/// [`select_in`] with a clause after the key condition on PostgreSQL (a row lock), and
/// parameters after the keys (`$3`… on PostgreSQL).
async fn select_in_then(
    conn: &impl ConnectionTrait,
    sql_before_in: &str,
    postgres_tail: &str,
    tenant: &str,
    keys: &[String],
    postgres_extra: Vec<Value>,
) -> Result<Vec<QueryResult>, DbErr> {
    let backend = conn.get_database_backend();
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    if backend == DbBackend::Postgres {
        // `IN (SELECT unnest(…))` plans as one primary-key probe per key whatever the
        // statistics say. `= ANY($2)` did too once the table was analysed, but on a table
        // growing faster than autovacuum analyses it (a bulk load) the planner scanned the
        // whole tenant and filtered: 90 ms per 1,000 keys at 300,000 rows, growing.
        let keys = array(ArrayType::String, keys.to_vec());
        let sql = format!("{sql_before_in} (SELECT unnest($2::text[])){postgres_tail}");
        let mut values = vec![tenant.into(), keys];
        values.extend(postgres_extra);
        return conn.query_all_raw(statement(backend, &sql, values)).await;
    }
    let mut out = Vec::new();
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        let sql = format!("{sql_before_in} ({})", in_list(1, chunk.len()));
        let mut values: Vec<Value> = vec![tenant.into()];
        values.extend(chunk.iter().map(|k| Value::from(k.clone())));
        out.extend(conn.query_all_raw(statement(backend, &sql, values)).await?);
    }
    Ok(out)
}

/// A stored customer.
#[derive(Debug, Clone, Default)]
pub(crate) struct CustomerRow {
    pub(crate) customer_id: String,
    pub(crate) name: String,
    pub(crate) email: String,
    pub(crate) phone: String,
    pub(crate) push_tokens: String,
    pub(crate) locale: String,
    pub(crate) time_zone: String,
    pub(crate) birthday: String,
    pub(crate) tags: String,
    pub(crate) attributes: String,
    pub(crate) erased: bool,
    pub(crate) created_at_us: i64,
    pub(crate) updated_at_us: i64,
}

const CUSTOMER_COLUMNS: &str = "customer_id, name, email, phone, push_tokens, locale, time_zone, birthday, tags, attributes, erased, created_at_us, updated_at_us";

fn customer_row(r: &QueryResult) -> Result<CustomerRow, DbErr> {
    Ok(CustomerRow {
        customer_id: r.try_get("", "customer_id")?,
        name: r.try_get("", "name")?,
        email: r.try_get("", "email")?,
        phone: r.try_get("", "phone")?,
        push_tokens: r.try_get("", "push_tokens")?,
        locale: r.try_get("", "locale")?,
        time_zone: r.try_get("", "time_zone")?,
        birthday: r.try_get("", "birthday")?,
        tags: r.try_get("", "tags")?,
        attributes: r.try_get("", "attributes")?,
        erased: r.try_get::<i64>("", "erased")? != 0,
        created_at_us: r.try_get("", "created_at_us")?,
        updated_at_us: r.try_get("", "updated_at_us")?,
    })
}

/// Customers by id.
pub(crate) async fn customers(
    conn: &impl ConnectionTrait,
    tenant: &str,
    ids: &[String],
) -> Result<HashMap<String, CustomerRow>, DbErr> {
    let rows = select_in(
        conn,
        &format!(
            "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE tenant_id = $1 AND customer_id IN"
        ),
        tenant,
        ids,
    )
    .await?;
    rows.iter()
        .map(|r| customer_row(r).map(|c| (c.customer_id.clone(), c)))
        .collect()
}

/// Writes customers (insert or replace by id).
pub(crate) async fn save_customers(
    conn: &impl ConnectionTrait,
    tenant: &str,
    rows: Vec<CustomerRow>,
) -> Result<(), DbErr> {
    let values = rows
        .into_iter()
        .map(|c| {
            vec![
                tenant.into(),
                c.customer_id.into(),
                c.name.into(),
                c.email.into(),
                c.phone.into(),
                c.push_tokens.into(),
                c.locale.into(),
                c.time_zone.into(),
                c.birthday.into(),
                c.tags.into(),
                c.attributes.into(),
                i64::from(c.erased).into(),
                c.created_at_us.into(),
                c.updated_at_us.into(),
            ]
        })
        .collect();
    insert_many(
        conn,
        &format!("INSERT INTO customers (tenant_id, {CUSTOMER_COLUMNS})"),
        "ON CONFLICT (tenant_id, customer_id) DO UPDATE SET name = excluded.name, email = excluded.email, \
         phone = excluded.phone, push_tokens = excluded.push_tokens, locale = excluded.locale, \
         time_zone = excluded.time_zone, birthday = excluded.birthday, tags = excluded.tags, \
         attributes = excluded.attributes, erased = excluded.erased, updated_at_us = excluded.updated_at_us",
        values,
    )
    .await
}

/// A page of customers after `after_id`, by id.
pub(crate) async fn list_customers(
    conn: &impl ConnectionTrait,
    tenant: &str,
    after_id: &str,
    limit: u64,
    tag: &str,
    updated_since_us: Option<i64>,
    include_erased: bool,
) -> Result<Vec<CustomerRow>, DbErr> {
    let mut sql = format!(
        "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE tenant_id = $1 AND customer_id > $2"
    );
    let mut values: Vec<Value> = vec![tenant.into(), after_id.into()];
    if !tag.is_empty() {
        values.push(format!("%{}%", serde_json::Value::from(tag)).into());
        sql.push_str(&format!(" AND tags LIKE ${}", values.len()));
    }
    if let Some(since) = updated_since_us {
        values.push(since.into());
        sql.push_str(&format!(" AND updated_at_us >= ${}", values.len()));
    }
    if !include_erased {
        sql.push_str(" AND erased = 0");
    }
    values.push((limit as i64).into());
    sql.push_str(&format!(" ORDER BY customer_id LIMIT ${}", values.len()));
    let rows = conn
        .query_all_raw(statement(conn.get_database_backend(), &sql, values))
        .await?;
    rows.iter().map(customer_row).collect()
}

/// The `state` column of a facts row.
fn facts_state(row: &QueryResult, customer_id: &str) -> Result<FactsState, DbErr> {
    let bytes: Vec<u8> = row.try_get("", "state")?;
    FactsState::decode(bytes.as_slice())
        .map_err(|e| DbErr::Custom(format!("facts state of {customer_id}: {e}")))
}

/// Writes the facts of the `touched` customers from `states` (which keeps them).
pub(crate) async fn save_touched_facts(
    conn: &impl ConnectionTrait,
    tenant: &str,
    states: &HashMap<String, FactsState>,
    touched: &std::collections::HashSet<String>,
) -> Result<(), DbErr> {
    save_facts(conn, tenant, &touched_states(states, touched)).await
}

/// The states of the `touched` customers, for [`save_facts`] or [`facts_statements`].
pub(crate) fn touched_states<'a>(
    states: &'a HashMap<String, FactsState>,
    touched: &'a std::collections::HashSet<String>,
) -> Vec<(&'a String, &'a FactsState)> {
    touched
        .iter()
        .filter_map(|id| states.get(id).map(|s| (id, s)))
        .collect()
}

/// What marks this transaction's facts writes: on PostgreSQL its transaction id (what
/// `save_facts` stores in `tx_id`), on SQLite the change counter after its writes (one
/// writer, so an unchanged counter later means nobody has written facts since).
pub(crate) async fn facts_write_mark(conn: &impl ConnectionTrait) -> Result<i64, DbErr> {
    let backend = conn.get_database_backend();
    let sql = match backend {
        DbBackend::Sqlite => "SELECT value AS mark FROM change_counter WHERE name = 'facts'",
        _ => "SELECT pg_current_xact_id()::text::bigint AS mark",
    };
    conn.query_one_raw(statement(backend, sql, vec![]))
        .await?
        .ok_or_else(|| DbErr::Custom("no facts write mark".into()))?
        .try_get("", "mark")
}

/// Facts states by customer id.
pub(crate) async fn facts_states(
    conn: &impl ConnectionTrait,
    tenant: &str,
    ids: &[String],
) -> Result<HashMap<String, FactsState>, DbErr> {
    // Every write locks the facts rows it will change, in key order, before reading them
    // (PostgreSQL; SQLite writers are serialised): concurrent writers for one customer
    // queue instead of losing each other's updates.
    let rows = select_in_then(
        conn,
        "SELECT customer_id, state FROM facts WHERE tenant_id = $1 AND customer_id IN",
        " ORDER BY customer_id FOR UPDATE",
        tenant,
        ids,
        Vec::new(),
    )
    .await?;
    rows.iter()
        .map(|r| {
            let id: String = r.try_get("", "customer_id")?;
            let state = facts_state(r, &id)?;
            Ok((id, state))
        })
        .collect()
}

/// Facts states by customer id (whether a customer was erased is in its state), like
/// [`facts_states`]; a row last written by one of `known_writes` (PostgreSQL transaction
/// ids whose states the caller holds) comes without its state.
pub(crate) async fn facts_states_except_known(
    conn: &impl ConnectionTrait,
    tenant: &str,
    ids: &[String],
    known_writes: &[i64],
) -> Result<HashMap<String, Option<FactsState>>, DbErr> {
    let known = conn.get_database_backend() == DbBackend::Postgres && !known_writes.is_empty();
    let (state, extra) = if known {
        (
            "CASE WHEN tx_id = ANY($3::bigint[]) THEN NULL ELSE state END AS state",
            vec![array(ArrayType::BigInt, known_writes.to_vec())],
        )
    } else {
        ("state", Vec::new())
    };
    let rows = select_in_then(
        conn,
        &format!("SELECT customer_id, {state} FROM facts WHERE tenant_id = $1 AND customer_id IN"),
        " ORDER BY customer_id FOR UPDATE",
        tenant,
        ids,
        extra,
    )
    .await?;
    rows.iter()
        .map(|r| {
            let id: String = r.try_get("", "customer_id")?;
            let state = match r.try_get::<Option<Vec<u8>>>("", "state")? {
                Some(_) => Some(facts_state(r, &id)?),
                None => None,
            };
            Ok((id, state))
        })
        .collect()
}

/// Writes facts rows, each with a new change position and its encoded `CustomerFacts`.
pub(crate) async fn save_facts<K, S>(
    conn: &impl ConnectionTrait,
    tenant: &str,
    states: &[(K, S)],
) -> Result<(), DbErr>
where
    K: AsRef<str> + Sync,
    S: std::borrow::Borrow<FactsState> + Sync,
{
    execute_all(conn, facts_statements(conn, tenant, states).await?).await
}

/// The statements of [`save_facts`], each built (facts rendered and encoded) when the
/// iterator reaches it; on SQLite the change set's number is reserved now.
pub(crate) async fn facts_statements<'a, K, S>(
    conn: &impl ConnectionTrait,
    tenant: &'a str,
    states: &'a [(K, S)],
) -> Result<Box<dyn Iterator<Item = Statement> + Send + 'a>, DbErr>
where
    K: AsRef<str> + Sync,
    S: std::borrow::Borrow<FactsState> + Sync,
{
    let backend = conn.get_database_backend();
    if states.is_empty() {
        return Ok(Box::new(std::iter::empty()));
    }
    let change = reserve_change_set(conn).await?;
    let change_set = (backend == DbBackend::Sqlite).then(|| {
        sqlite_change_set_statement(tenant, states.iter().map(|(id, _)| id.as_ref()), change)
    });
    let parts = states.chunks(facts_per_statement(backend));
    Ok(Box::new(change_set.into_iter().chain(parts.map(
        move |part| facts_statement(backend, tenant, part, change),
    ))))
}

/// Facts rows written by one statement at most: all of them on PostgreSQL (column arrays),
/// a multi-row insert's worth on SQLite.
pub(crate) fn facts_per_statement(backend: DbBackend) -> usize {
    match backend {
        DbBackend::Postgres => usize::MAX,
        _ => ROWS_PER_STATEMENT,
    }
}

/// Reserves the number of a change set about to be written. SQLite only (one writer, so
/// numbers are commit order); PostgreSQL numbers a set as it writes it (0 is returned).
pub(crate) async fn reserve_change_set(conn: &impl ConnectionTrait) -> Result<i64, DbErr> {
    let backend = conn.get_database_backend();
    if backend == DbBackend::Postgres {
        return Ok(0);
    }
    conn.query_one_raw(statement(
        backend,
        "UPDATE change_counter SET value = value + 1 WHERE name = 'facts' RETURNING value",
        vec![],
    ))
    .await?
    .ok_or_else(|| DbErr::Custom("change counter missing".into()))?
    .try_get("", "value")
}

/// The change set of a SQLite transaction's facts writes: its number (reserved by
/// [`reserve_change_set`]) and the customers written, one per line (ids hold no control
/// characters). PostgreSQL writes its sets inside [`facts_statement`].
pub(crate) fn sqlite_change_set_statement<'a>(
    tenant: &str,
    ids: impl Iterator<Item = &'a str>,
    change: i64,
) -> Statement {
    statement(
        DbBackend::Sqlite,
        "INSERT INTO facts_change_sets (tenant_id, tx_id, change_seq, customer_ids) VALUES ($1, 0, $2, $3)",
        vec![
            tenant.into(),
            change.into(),
            ids.collect::<Vec<_>>().join("\n").into(),
        ],
    )
}

/// One statement writing `states` (at most [`facts_per_statement`]), each row with its
/// encoded `CustomerFacts` and the position of the change set that lists it: on SQLite set
/// `change` (written apart, [`sqlite_change_set_statement`]); on PostgreSQL a set this
/// statement writes too, numbered as it runs.
///
/// No index covers the position, so an update leaves every index as it was and PostgreSQL
/// can keep the new version on the row's page (a HOT update) and prune the old one there.
pub(crate) fn facts_statement<K, S>(
    backend: DbBackend,
    tenant: &str,
    states: &[(K, S)],
    change: i64,
) -> Statement
where
    K: AsRef<str>,
    S: std::borrow::Borrow<FactsState>,
{
    const UPSERT: &str = " ON CONFLICT (tenant_id, customer_id) DO UPDATE SET tx_id = excluded.tx_id, \
         change_seq = excluded.change_seq, state = excluded.state, framed = excluded.framed";
    if backend == DbBackend::Postgres {
        // Column arrays: four parameters for any number of customers.
        let n = states.len();
        let (mut ids, mut state_bytes, mut framed) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for (customer_id, state) in states {
            let (customer_id, state) = (customer_id.as_ref(), state.borrow());
            state_bytes.push(state.encode_to_vec());
            framed.push(framed_facts(&state.render(customer_id)));
            ids.push(customer_id.to_owned());
        }
        let sql = format!(
            "WITH change_set AS (INSERT INTO facts_change_sets (tenant_id, tx_id, change_seq, customer_ids) \
             VALUES ($1, pg_current_xact_id()::text::bigint, nextval('facts_change_seq'), array_to_string($2::text[], E'\\n')) \
             RETURNING tx_id, change_seq) \
             INSERT INTO facts (tenant_id, customer_id, tx_id, change_seq, state, framed) \
             SELECT $1, u.customer_id, s.tx_id, s.change_seq, u.state, u.framed \
             FROM change_set s, UNNEST($2::text[], $3::bytea[], $4::bytea[]) AS u(customer_id, state, framed){UPSERT}"
        );
        let values = vec![
            tenant.into(),
            array(ArrayType::String, ids),
            array(ArrayType::Bytes, state_bytes),
            array(ArrayType::Bytes, framed),
        ];
        return statement(backend, &sql, values);
    }
    let rows = states.iter().map(|(customer_id, state)| {
        let (customer_id, state) = (customer_id.as_ref(), state.borrow());
        let framed = framed_facts(&state.render(customer_id));
        vec![
            tenant.into(),
            customer_id.into(),
            0i64.into(),
            change.into(),
            state.encode_to_vec().into(),
            framed.into(),
        ]
    });
    let mut stmt = multi_row_insert(
        backend,
        "INSERT INTO facts (tenant_id, customer_id, tx_id, change_seq, state, framed)",
        rows,
    );
    stmt.sql.push_str(UPSERT);
    stmt
}

/// The encoded facts of the customers among `ids`.
pub(crate) async fn encoded_facts_of(
    conn: &impl ConnectionTrait,
    tenant: &str,
    ids: &[String],
) -> Result<HashMap<String, Vec<u8>>, DbErr> {
    select_in(
        conn,
        "SELECT customer_id, framed FROM facts WHERE tenant_id = $1 AND customer_id IN",
        tenant,
        ids,
    )
    .await?
    .iter()
    .map(|r| {
        let framed: Vec<u8> = r.try_get("", "framed")?;
        Ok((r.try_get("", "customer_id")?, unframed(&framed)?.to_vec()))
    })
    .collect()
}

/// The current consent rows of the customers among `ids` (with `customer_id`, unordered).
pub(crate) async fn consents_of(
    conn: &impl ConnectionTrait,
    tenant: &str,
    ids: &[String],
) -> Result<Vec<QueryResult>, DbErr> {
    select_in(
        conn,
        "SELECT customer_id, channel, purpose, granted, source, recorded_at_us FROM consents \
         WHERE tenant_id = $1 AND customer_id IN",
        tenant,
        ids,
    )
    .await
}

/// The encoded facts of one customer.
pub(crate) async fn encoded_facts(
    conn: &impl ConnectionTrait,
    tenant: &str,
    customer_id: &str,
) -> Result<Option<Vec<u8>>, DbErr> {
    let row = conn
        .query_one_raw(statement(
            conn.get_database_backend(),
            "SELECT framed FROM facts WHERE tenant_id = $1 AND customer_id = $2",
            vec![tenant.into(), customer_id.into()],
        ))
        .await?;
    row.map(|r| {
        let framed: Vec<u8> = r.try_get("", "framed")?;
        Ok(unframed(&framed)?.to_vec())
    })
    .transpose()
}

/// A page of a tenant's stored facts (`StreamFactsResponse.facts` entries) concatenated by
/// the database.
#[derive(Debug, Default)]
pub(crate) struct FramedFactsPage {
    /// Entries in the page.
    pub(crate) count: usize,
    /// The last customer id of the page (where the next one starts after).
    pub(crate) last: String,
    pub(crate) framed: Vec<u8>,
}

/// Up to `limit` customers' stored (framed, [`framed_facts`]) facts after customer `after`,
/// in customer order, concatenated in one value: a page is one row for the driver to hand
/// over instead of `limit` (a million rows went through the driver's thread, its channel
/// and a row object each). The aggregate takes the rows in the subquery's order without
/// sorting them again: the caller checks the order (`facts_frame::ids_ascend`).
pub(crate) async fn framed_facts_page(
    conn: &impl ConnectionTrait,
    tenant: &str,
    after: &str,
    limit: usize,
) -> Result<FramedFactsPage, DbErr> {
    let backend = conn.get_database_backend();
    let sql = match backend {
        DbBackend::Sqlite => {
            "SELECT count(*) AS n, max(customer_id) AS last, CAST(group_concat(framed, '') AS BLOB) AS framed \
             FROM (SELECT customer_id, framed FROM facts WHERE tenant_id = $1 AND customer_id > $2 \
             ORDER BY customer_id LIMIT $3)"
        }
        _ => {
            "SELECT count(*) AS n, max(customer_id) AS last, string_agg(framed, ''::bytea) AS framed \
             FROM (SELECT customer_id, framed FROM facts WHERE tenant_id = $1 AND customer_id > $2 \
             ORDER BY customer_id LIMIT $3) AS page"
        }
    };
    let row = conn
        .query_one_raw(statement(
            backend,
            sql,
            vec![tenant.into(), after.into(), (limit as i64).into()],
        ))
        .await?;
    let Some(row) = row else {
        return Ok(FramedFactsPage::default());
    };
    Ok(FramedFactsPage {
        count: usize::try_from(row.try_get::<i64>("", "n")?).unwrap_or_default(),
        last: row
            .try_get::<Option<String>>("", "last")?
            .unwrap_or_default(),
        framed: row
            .try_get::<Option<Vec<u8>>>("", "framed")?
            .unwrap_or_default(),
    })
}

/// Where a facts stream starts from: every change set at or after this position may not
/// be in a full read that begins now (the position names a whole set as served).
pub(crate) async fn facts_horizon(conn: &impl ConnectionTrait) -> Result<Cursor, DbErr> {
    let backend = conn.get_database_backend();
    let sql = match backend {
        DbBackend::Sqlite => {
            "SELECT 0 AS tx_id, value AS seq FROM change_counter WHERE name = 'facts'"
        }
        _ => {
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS tx_id, 0::bigint AS seq"
        }
    };
    let row = conn
        .query_one_raw(statement(backend, sql, vec![]))
        .await?
        .ok_or_else(|| DbErr::Custom("no horizon".into()))?;
    let tx_id: i64 = row.try_get("", "tx_id")?;
    let seq: i64 = row.try_get("", "seq")?;
    // On PostgreSQL sets of transactions at or after xmin may be missing from a read that
    // starts now: resume just below the horizon.
    let (tx_id, seq) = match backend {
        DbBackend::Sqlite => (tx_id, seq),
        _ => (tx_id.saturating_sub(1), i64::MAX),
    };
    Ok(Cursor {
        tx_id,
        seq,
        index: WHOLE_SET,
    })
}

/// A cursor index past every customer of its change set.
const WHOLE_SET: i64 = i64::MAX;

/// Change sets read per query by [`facts_changed`]: a set can list thousands of customers.
const SETS_PER_READ: i64 = 16;

/// Stored (framed) facts of customers changed after `after`, in change order, below the
/// horizon, up to `limit` of them.
#[derive(Debug)]
pub(crate) struct ChangedFacts {
    pub(crate) framed: Vec<Vec<u8>>,
    /// Where the next page starts: every customer of every set up to here was looked at.
    pub(crate) reached: Cursor,
}

/// A page of [`ChangedFacts`]. The change sets after `after` list the customers each
/// write changed (a cursor's index counts customers within its set); a customer is served
/// at its latest set only, the one its facts row names, so it comes once however often it
/// changed, with its current facts.
pub(crate) async fn facts_changed(
    conn: &impl ConnectionTrait,
    tenant: &str,
    after: Cursor,
    limit: usize,
) -> Result<ChangedFacts, DbErr> {
    let backend = conn.get_database_backend();
    let sql = match backend {
        DbBackend::Sqlite => {
            "SELECT tx_id, change_seq, customer_ids FROM facts_change_sets WHERE tenant_id = $1 \
             AND change_seq >= $3 AND $2 = 0 ORDER BY change_seq LIMIT $4"
        }
        _ => {
            "SELECT tx_id, change_seq, customer_ids FROM facts_change_sets WHERE tenant_id = $1 \
             AND (tx_id, change_seq) >= ($2, $3) \
             AND tx_id < pg_snapshot_xmin(pg_current_snapshot())::text::bigint ORDER BY tx_id, change_seq LIMIT $4"
        }
    };
    let mut page = ChangedFacts {
        framed: Vec::new(),
        reached: after,
    };
    loop {
        let values = vec![
            tenant.into(),
            page.reached.tx_id.into(),
            page.reached.seq.into(),
            SETS_PER_READ.into(),
        ];
        let sets = conn.query_all_raw(statement(backend, sql, values)).await?;
        // Every customer of these sets not yet looked at, with its place.
        let mut listed: Vec<(Cursor, String)> = Vec::new();
        for set in &sets {
            let (tx_id, seq): (i64, i64) =
                (set.try_get("", "tx_id")?, set.try_get("", "change_seq")?);
            let ids: String = set.try_get("", "customer_ids")?;
            let seen = if (tx_id, seq) == (page.reached.tx_id, page.reached.seq) {
                page.reached.index
            } else {
                -1
            };
            listed.extend(
                ids.split('\n')
                    .zip(0..)
                    .filter(|(_, index)| *index > seen)
                    .map(|(id, index)| (Cursor { tx_id, seq, index }, id.to_owned())),
            );
        }
        let ids: Vec<String> = listed
            .iter()
            .map(|(_, id)| id.clone())
            .collect::<std::collections::HashSet<_>>()
            .into_iter()
            .collect();
        let mut current: HashMap<String, (Cursor, Vec<u8>)> = HashMap::with_capacity(ids.len());
        for r in select_in(
            conn,
            "SELECT customer_id, tx_id, change_seq, framed FROM facts WHERE tenant_id = $1 AND customer_id IN",
            tenant,
            &ids,
        )
        .await?
        {
            let written = Cursor::row(r.try_get("", "tx_id")?, r.try_get("", "change_seq")?);
            current.insert(r.try_get("", "customer_id")?, (written, r.try_get("", "framed")?));
        }
        for (place, id) in listed {
            page.reached = place;
            // A customer listed again by a later set is served there.
            let latest = current.get(&id).is_some_and(|(written, _)| {
                (written.tx_id, written.seq) == (place.tx_id, place.seq)
            });
            if latest && let Some((_, framed)) = current.remove(&id) {
                page.framed.push(framed);
                if page.framed.len() == limit {
                    return Ok(page);
                }
            }
        }
        if sets.len() < SETS_PER_READ as usize {
            return Ok(page);
        }
    }
}

/// A stored order, as idempotency and adjustments need it.
#[derive(Debug, Clone)]
pub(crate) struct StoredOrder {
    pub(crate) customer_id: String,
    pub(crate) fingerprint: String,
    pub(crate) total_minor: i64,
    pub(crate) refunded_minor: i64,
    pub(crate) cancelled: bool,
    pub(crate) currency: String,
}

/// Orders by id.
pub(crate) async fn orders(
    conn: &impl ConnectionTrait,
    tenant: &str,
    ids: &[String],
) -> Result<HashMap<String, StoredOrder>, DbErr> {
    let rows = select_in(
        conn,
        "SELECT order_id, customer_id, fingerprint, total_minor, refunded_minor, cancelled, currency FROM orders \
         WHERE tenant_id = $1 AND order_id IN",
        tenant,
        ids,
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("", "order_id")?,
                StoredOrder {
                    customer_id: r.try_get("", "customer_id")?,
                    fingerprint: r.try_get("", "fingerprint")?,
                    total_minor: r.try_get("", "total_minor")?,
                    refunded_minor: r.try_get("", "refunded_minor")?,
                    cancelled: r.try_get::<i64>("", "cancelled")? != 0,
                    currency: r.try_get("", "currency")?,
                },
            ))
        })
        .collect()
}

/// A customer's orders that still count, as facts see them.
pub(crate) async fn customer_order_facts(
    conn: &impl ConnectionTrait,
    tenant: &str,
    customer_id: &str,
) -> Result<Vec<OrderFact>, DbErr> {
    let rows = conn
        .query_all_raw(statement(
            conn.get_database_backend(),
            "SELECT order_id, placed_at_us, total_minor, refunded_minor, lines FROM orders \
             WHERE tenant_id = $1 AND customer_id = $2 AND cancelled = 0 ORDER BY placed_at_us",
            vec![tenant.into(), customer_id.into()],
        ))
        .await?;
    rows.iter()
        .map(|r| {
            let lines: String = r.try_get("", "lines")?;
            let total: i64 = r.try_get("", "total_minor")?;
            let refunded: i64 = r.try_get("", "refunded_minor")?;
            Ok(OrderFact {
                order_id: r.try_get("", "order_id")?,
                placed_at_us: r.try_get("", "placed_at_us")?,
                total_minor: total - refunded,
                category_spend: serde_json::from_str(&lines)
                    .map_err(|e| DbErr::Custom(e.to_string()))?,
            })
        })
        .collect()
}

/// Executes one statement.
pub(crate) async fn exec(
    conn: &impl ConnectionTrait,
    sql: &str,
    values: Vec<Value>,
) -> Result<u64, DbErr> {
    Ok(conn
        .execute_raw(statement(conn.get_database_backend(), sql, values))
        .await?
        .rows_affected())
}

/// Runs one query.
pub(crate) async fn query(
    conn: &impl ConnectionTrait,
    sql: &str,
    values: Vec<Value>,
) -> Result<Vec<QueryResult>, DbErr> {
    conn.query_all_raw(statement(conn.get_database_backend(), sql, values))
        .await
}

/// Ids among `ids` already stored in `table` (keyed by tenant and `column`).
pub(crate) async fn existing_ids(
    conn: &impl ConnectionTrait,
    table: &str,
    column: &str,
    tenant: &str,
    ids: &[String],
) -> Result<std::collections::HashSet<String>, DbErr> {
    let rows = select_in(
        conn,
        &format!("SELECT {column} AS id FROM {table} WHERE tenant_id = $1 AND {column} IN"),
        tenant,
        ids,
    )
    .await?;
    rows.iter().map(|r| r.try_get("", "id")).collect()
}

/// A page of facts rows in customer order after `after`, each with its state and the
/// customer's creation time (`None` for a facts row without a customer row).
pub(crate) async fn facts_states_page(
    conn: &impl ConnectionTrait,
    tenant: &str,
    after: &str,
    limit: usize,
) -> Result<Vec<(String, FactsState, Option<i64>)>, DbErr> {
    let rows = query(
        conn,
        "SELECT f.customer_id, f.state, c.created_at_us FROM facts f \
         LEFT JOIN customers c ON c.tenant_id = f.tenant_id AND c.customer_id = f.customer_id \
         WHERE f.tenant_id = $1 AND f.customer_id > $2 ORDER BY f.customer_id LIMIT $3",
        vec![tenant.into(), after.into(), (limit as i64).into()],
    )
    .await?;
    rows.iter()
        .map(|r| {
            let id: String = r.try_get("", "customer_id")?;
            let state = facts_state(r, &id)?;
            Ok((id, state, r.try_get("", "created_at_us")?))
        })
        .collect()
}

/// The orders of `ids` placed at or before `as_of_us`, as they stood then: refunds and
/// cancellations made after it do not count. By customer, in time order.
pub(crate) async fn order_facts_as_of(
    conn: &impl ConnectionTrait,
    tenant: &str,
    ids: &[String],
    as_of_us: i64,
) -> Result<HashMap<String, Vec<OrderFact>>, DbErr> {
    // Orders never adjusted (nearly all) skip the adjustment lookups.
    let adjusted = |kind: i32, aggregate: &str| {
        format!(
            "CAST(CASE WHEN o.refunded_minor = 0 AND o.cancelled = 0 THEN 0 ELSE COALESCE((\
             SELECT {aggregate} FROM order_adjustments a WHERE a.tenant_id = o.tenant_id \
             AND a.order_id = o.order_id AND a.kind = {kind} AND a.occurred_at_us <= {as_of_us}), 0) END \
             AS BIGINT)"
        )
    };
    let sql = format!(
        "SELECT o.customer_id, o.order_id, o.placed_at_us, o.total_minor, o.lines, \
         {refunded} AS refunded_then, {cancelled} AS cancelled_then FROM orders o \
         WHERE o.tenant_id = $1 AND o.placed_at_us <= {as_of_us} AND o.customer_id IN",
        refunded = adjusted(
            winback_proto::profiles::AdjustmentKind::Refund as i32,
            "SUM(a.amount_minor)"
        ),
        cancelled = adjusted(
            winback_proto::profiles::AdjustmentKind::Cancellation as i32,
            "COUNT(*)"
        ),
    );
    let rows = select_in(conn, &sql, tenant, ids).await?;
    let mut by_customer: HashMap<String, Vec<OrderFact>> = HashMap::new();
    for r in &rows {
        if r.try_get::<i64>("", "cancelled_then")? != 0 {
            continue;
        }
        let lines: String = r.try_get("", "lines")?;
        let total: i64 = r.try_get("", "total_minor")?;
        let refunded: i64 = r.try_get("", "refunded_then")?;
        by_customer
            .entry(r.try_get("", "customer_id")?)
            .or_default()
            .push(OrderFact {
                order_id: r.try_get("", "order_id")?,
                placed_at_us: r.try_get("", "placed_at_us")?,
                total_minor: total - refunded,
                category_spend: serde_json::from_str(&lines)
                    .map_err(|e| DbErr::Custom(e.to_string()))?,
            });
    }
    for orders in by_customer.values_mut() {
        orders.sort_by(|a, b| (a.placed_at_us, &a.order_id).cmp(&(b.placed_at_us, &b.order_id)));
    }
    Ok(by_customer)
}

/// One stored engagement event, as facts replay it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredEngagement {
    pub(crate) kind: String,
    pub(crate) at_us: i64,
    pub(crate) detail: String,
}

/// The engagement events of `ids` at or before `as_of_us`, by customer, in time order.
pub(crate) async fn engagement_as_of(
    conn: &impl ConnectionTrait,
    tenant: &str,
    ids: &[String],
    as_of_us: i64,
) -> Result<HashMap<String, Vec<StoredEngagement>>, DbErr> {
    let sql = format!(
        "SELECT customer_id, event_id, kind, occurred_at_us, detail FROM engagement_events \
         WHERE tenant_id = $1 AND occurred_at_us <= {as_of_us} AND customer_id IN"
    );
    let rows = select_in(conn, &sql, tenant, ids).await?;
    let mut by_customer: HashMap<String, Vec<(String, StoredEngagement)>> = HashMap::new();
    for r in &rows {
        by_customer
            .entry(r.try_get("", "customer_id")?)
            .or_default()
            .push((
                r.try_get("", "event_id")?,
                StoredEngagement {
                    kind: r.try_get("", "kind")?,
                    at_us: r.try_get("", "occurred_at_us")?,
                    detail: r.try_get("", "detail")?,
                },
            ));
    }
    Ok(by_customer
        .into_iter()
        .map(|(customer, mut events)| {
            events.sort_by(|a, b| (a.1.at_us, &a.0).cmp(&(b.1.at_us, &b.0)));
            (customer, events.into_iter().map(|(_, e)| e).collect())
        })
        .collect())
}
