//! Orders: recorded in batches (unary or a client stream), idempotent by the tenant's
//! order id, each batch updating its customers' facts in the same transaction.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sea_orm::ConnectionTrait;

use winback_platform::db::execute_all;
use winback_platform::{FieldViolation, ServiceError};
use winback_proto::common::Money;
use winback_proto::events::event::Payload;
use winback_proto::events::{OrderAdjusted, PurchaseRecorded};
use winback_proto::profiles::{
    AdjustOrderRequest, AdjustmentKind, CustomerFacts, Order, OrderOutcome, RejectedOrder,
};

use crate::context::{Profiles, micros};
use crate::domain::facts::{FactsState, OrderFact};
use crate::domain::validate::{self, MAX_BATCH, Violations};
use crate::store::rows;
use crate::written_states::WrittenStates;

/// What to do with a bad order in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnInvalid {
    /// Refuse the whole batch; nothing is stored.
    RefuseBatch,
    /// Store the good orders and report the bad ones.
    SkipOrder,
}

/// What a batch did.
#[derive(Debug, Default)]
pub(crate) struct BatchResult {
    /// One outcome per order (unspecified for rejected ones).
    pub(crate) outcomes: Vec<OrderOutcome>,
    /// Rejected orders (only with [`OnInvalid::SkipOrder`]).
    pub(crate) rejected: Vec<RejectedOrder>,
}

/// A stable fingerprint of an order's content: the same order sent twice is recognised,
/// the same id with other content is not. Two FNV-1a hashes with different seeds (128 bits);
/// only ever compared between orders with the same id.
pub(crate) fn fingerprint(o: &Order) -> String {
    struct Fnv(u64, u64);
    impl Fnv {
        fn write(&mut self, bytes: &[u8]) {
            for &b in bytes.iter().chain(b"|") {
                self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
                self.1 = (self.1 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325, 0x6c62_272e_07bb_0142);
    fn money(m: &Option<Money>) -> (i64, &str) {
        m.as_ref()
            .map_or((0, ""), |m| (m.amount_minor, m.currency.as_str()))
    }
    h.write(o.customer_id.as_bytes());
    h.write(
        &o.placed_at
            .as_ref()
            .map(micros)
            .unwrap_or_default()
            .to_le_bytes(),
    );
    let (total, currency) = money(&o.total);
    h.write(currency.as_bytes());
    h.write(&total.to_le_bytes());
    h.write(o.store.as_bytes());
    h.write(o.coupon_code.as_bytes());
    for l in &o.lines {
        h.write(l.sku.as_bytes());
        h.write(l.category.as_bytes());
        h.write(&l.quantity.to_le_bytes());
        h.write(&money(&l.unit_price).0.to_le_bytes());
    }
    format!("{:016x}{:016x}", h.0, h.1)
}

fn category_spend(o: &Order) -> Vec<(String, i64)> {
    let mut spend: HashMap<&str, i64> = HashMap::new();
    for l in &o.lines {
        let line = l
            .unit_price
            .as_ref()
            .map_or(0, |p| p.amount_minor.saturating_mul(i64::from(l.quantity)));
        let category = if l.category.is_empty() {
            "uncategorised"
        } else {
            l.category.as_str()
        };
        *spend.entry(category).or_default() += line;
    }
    let mut spend: Vec<(String, i64)> = spend.into_iter().map(|(c, s)| (c.to_owned(), s)).collect();
    spend.sort();
    spend
}

/// Why an order cannot be recorded for its customer: unknown, erased, or another
/// currency than the customer's orders so far. `index` is the order's position in the
/// request or stream (its field paths are written only for a problem).
fn customer_problem(o: &Order, states: &HashMap<String, FactsState>, index: usize) -> Problem {
    let customer_at = || format!("orders[{index}].customer_id");
    let Some(state) = states.get(&o.customer_id) else {
        let customer_at = customer_at();
        return Some((
            FieldViolation::new(customer_at.clone(), "unknown customer"),
            ServiceError::not_found_at("customer", &o.customer_id, customer_at),
        ));
    };
    if state.erased {
        let customer_at = customer_at();
        return Some((
            FieldViolation::new(customer_at.clone(), "customer was erased"),
            ServiceError::FailedPrecondition(format!("{customer_at}: customer was erased")),
        ));
    }
    let currency = o
        .total
        .as_ref()
        .map(|m| m.currency.as_str())
        .unwrap_or_default();
    let known = state.currency.as_str();
    (!known.is_empty() && known != currency).then(|| {
        let currency_at = format!("orders[{index}].total.currency");
        let why = format!("the customer's orders are in {known}");
        (
            FieldViolation::new(currency_at.clone(), why.clone()),
            ServiceError::invalid(currency_at, why),
        )
    })
}

/// The new orders of a group (rows, events and facts are built from them as the write
/// asks for them) and the customers they touch.
#[derive(Default)]
struct Writes {
    touched: HashSet<String>,
    recorded: Vec<(Order, PreparedOrder)>,
}

/// The row that stores a new order.
fn order_row(o: &Order, prepared: &PreparedOrder) -> rows::NewOrder {
    let (currency, total_minor) = o
        .total
        .as_ref()
        .map_or((String::new(), 0), |m| (m.currency.clone(), m.amount_minor));
    rows::NewOrder {
        order_id: o.order_id.clone(),
        customer_id: o.customer_id.clone(),
        placed_at_us: o.placed_at.as_ref().map(micros).unwrap_or_default(),
        currency,
        total_minor,
        store: o.store.clone(),
        coupon_code: o.coupon_code.clone(),
        lines: prepared.lines.clone(),
        fingerprint: prepared.fingerprint.clone(),
    }
}

/// The event that tells the other services of a new order.
fn purchase_recorded(o: &Order) -> Payload {
    Payload::PurchaseRecorded(PurchaseRecorded {
        customer_id: o.customer_id.clone(),
        order_id: o.order_id.clone(),
        placed_at: o.placed_at,
        total: Some(o.total.clone().unwrap_or_default()),
        coupon_code: o.coupon_code.clone(),
        store: o.store.clone(),
    })
}

/// Folds a new order into its customer's facts (the customer's currency is set already).
fn fold(
    states: &mut HashMap<String, FactsState>,
    now_us: i64,
    o: &Order,
    prepared: &PreparedOrder,
) {
    let Some(state) = states.get_mut(&o.customer_id) else {
        return;
    };
    state.apply_order(&OrderFact {
        order_id: o.order_id.clone(),
        placed_at_us: o.placed_at.as_ref().map(micros).unwrap_or_default(),
        total_minor: o.total.as_ref().map_or(0, |m| m.amount_minor),
        category_spend: prepared.spend.clone(),
    });
    state.updated_at_us = now_us;
}

/// Orders folded per statement asked for on SQLite, where the rows go in many small
/// statements: a fold step takes about as long as one of them runs.
const FOLD_STEP: usize = 500;

/// A group's write as a chain of statements, each built when [`execute_all`] asks for it —
/// that is, while the statement before it runs: first the orders' and events' rows, each
/// ask also folding the next orders into their customers' facts, then the touched
/// customers' facts. The fold and the rendering of facts so run beside the database's work
/// instead of before it.
struct GroupWrite<'a, R> {
    backend: sea_orm::DbBackend,
    tenant: &'a str,
    rows: R,
    /// Statements handed out so far (the first one runs with nothing beside it).
    asked: usize,
    recorded: Arc<Vec<(Order, PreparedOrder)>>,
    folded: usize,
    now_us: i64,
    states: HashMap<String, FactsState>,
    touched: Vec<String>,
    facts_written: usize,
    /// The group's change set: its number (SQLite) and whether it was written.
    change: i64,
    change_set_written: bool,
}

impl<R> GroupWrite<'_, R> {
    /// Folds the next `n` orders not yet folded.
    fn fold(&mut self, n: usize) {
        let end = self.recorded.len().min(self.folded.saturating_add(n));
        for (o, prepared) in &self.recorded[self.folded..end] {
            fold(&mut self.states, self.now_us, o, prepared);
        }
        self.folded = end;
    }
}

impl<R: Iterator<Item = sea_orm::Statement>> Iterator for GroupWrite<'_, R> {
    type Item = sea_orm::Statement;

    fn next(&mut self) -> Option<sea_orm::Statement> {
        self.asked += 1;
        if let Some(statement) = self.rows.next() {
            if self.asked > 1 {
                // PostgreSQL takes the rows in one statement each: fold everything while
                // the orders are inserted.
                let step = match self.backend {
                    sea_orm::DbBackend::Postgres => usize::MAX,
                    _ => FOLD_STEP,
                };
                self.fold(step);
            }
            return Some(statement);
        }
        self.fold(usize::MAX);
        if self.backend == sea_orm::DbBackend::Sqlite
            && !self.change_set_written
            && !self.touched.is_empty()
        {
            self.change_set_written = true;
            return Some(rows::sqlite_change_set_statement(
                self.tenant,
                self.touched.iter().map(String::as_str),
                self.change,
            ));
        }
        let ids = self.touched.get(self.facts_written..)?;
        let ids = &ids[..ids.len().min(rows::facts_per_statement(self.backend))];
        if ids.is_empty() {
            return None;
        }
        let facts: Vec<(&String, &FactsState)> = ids
            .iter()
            .filter_map(|id| self.states.get(id).map(|s| (id, s)))
            .collect();
        let statement = rows::facts_statement(self.backend, self.tenant, &facts, self.change);
        self.facts_written += ids.len();
        Some(statement)
    }
}

/// One client batch of orders: a unary request or one message of a stream.
#[derive(Debug)]
pub(crate) struct OrderChunk {
    pub(crate) orders: Vec<Order>,
    /// Position of the chunk's first order in the whole request or stream, for field paths
    /// and rejections.
    pub(crate) first_index: usize,
}

/// What a group of chunks did: the result of each chunk stored, in order, and why the
/// chunk after them was refused (nothing of it, nor of any chunk after it, is stored).
#[derive(Debug, Default)]
pub(crate) struct GroupResult {
    pub(crate) stored: Vec<BatchResult>,
    pub(crate) refused: Option<ServiceError>,
}

/// A bad order: the violation reported for it and the error that refuses its chunk.
type Problem = Option<(FieldViolation, ServiceError)>;

/// What an order contributes that needs no database: its fingerprint, its spend per
/// category and the lines column (JSON) of its row.
#[derive(Debug, Default)]
pub(crate) struct PreparedOrder {
    fingerprint: String,
    spend: Vec<(String, i64)>,
    lines: String,
}

impl PreparedOrder {
    fn of(o: &Order) -> Self {
        let spend = category_spend(o);
        Self {
            fingerprint: fingerprint(o),
            lines: serde_json::to_string(&spend).unwrap_or_default(),
            spend,
        }
    }
}

/// A chunk whose orders' shape was checked and whose good orders were prepared.
#[derive(Debug)]
pub(crate) struct CheckedChunk {
    chunk: OrderChunk,
    problems: Vec<Problem>,
    /// One per order (default for an order with a shape problem).
    prepared: Vec<PreparedOrder>,
}

/// A group of chunks checked and prepared before its transaction.
#[derive(Debug, Default)]
pub(crate) struct PreparedGroup {
    pub(crate) checked: Vec<CheckedChunk>,
    /// The shape error that refused the chunk after the checked ones (none of the chunks
    /// after it was read).
    pub(crate) refused: Option<ServiceError>,
}

impl PreparedGroup {
    /// Nothing to record and nothing refused.
    pub(crate) fn is_empty(&self) -> bool {
        self.checked.is_empty() && self.refused.is_none()
    }
}

/// Shape problems of each order of a chunk (no database needed), or the error that
/// refuses the whole chunk.
fn shape_problems(
    chunk: &OrderChunk,
    now: chrono::DateTime<chrono::Utc>,
    on_invalid: OnInvalid,
) -> Result<Vec<Problem>, ServiceError> {
    if chunk.orders.len() > MAX_BATCH {
        return Err(ServiceError::invalid(
            "orders",
            format!("at most {MAX_BATCH} orders per batch"),
        ));
    }
    let mut problems: Vec<Problem> = Vec::with_capacity(chunk.orders.len());
    let mut all_violations = Vec::new();
    for (i, o) in chunk.orders.iter().enumerate() {
        let mut v = Violations::default();
        validate::order(
            &mut v,
            &format!("orders[{}]", chunk.first_index + i),
            o,
            now,
        );
        problems.push(v.0.first().cloned().map(|first| {
            all_violations.extend(v.0.iter().cloned());
            (first, ServiceError::InvalidArgument(v.0))
        }));
    }
    if on_invalid == OnInvalid::RefuseBatch && !all_violations.is_empty() {
        return Err(ServiceError::InvalidArgument(all_violations));
    }
    Ok(problems)
}

impl Profiles {
    /// Records one batch of orders in its own transaction.
    pub(crate) async fn record_orders(
        &self,
        tenant: &str,
        orders: Vec<Order>,
        on_invalid: OnInvalid,
    ) -> Result<BatchResult, ServiceError> {
        let group = self
            .record_order_chunks(
                tenant,
                vec![OrderChunk {
                    orders,
                    first_index: 0,
                }],
                on_invalid,
                None,
            )
            .await?;
        match group.refused {
            Some(err) => Err(err),
            None => Ok(group.stored.into_iter().next().unwrap_or_default()),
        }
    }

    /// Checks the shape of each order of a chunk and prepares the good ones (no database
    /// needed); `Err` refuses the chunk. A stream runs this as its chunks arrive, while the
    /// group before them is written.
    pub(crate) fn prepare_chunk(
        &self,
        chunk: OrderChunk,
        on_invalid: OnInvalid,
    ) -> Result<CheckedChunk, ServiceError> {
        let problems = shape_problems(&chunk, self.clock.now(), on_invalid)?;
        let prepared = chunk
            .orders
            .iter()
            .zip(&problems)
            .map(|(o, problem)| match problem {
                None => PreparedOrder::of(o),
                Some(_) => PreparedOrder::default(),
            })
            .collect();
        Ok(CheckedChunk {
            chunk,
            problems,
            prepared,
        })
    }

    /// Prepares chunks in turn until one is refused.
    fn prepare_chunks(&self, chunks: Vec<OrderChunk>, on_invalid: OnInvalid) -> PreparedGroup {
        let mut group = PreparedGroup::default();
        for chunk in chunks {
            match self.prepare_chunk(chunk, on_invalid) {
                Ok(checked) => group.checked.push(checked),
                Err(err) => {
                    group.refused = Some(err);
                    break;
                }
            }
        }
        group
    }

    /// Records chunks of orders in one transaction, as if each were recorded in turn: a
    /// chunk sees the orders and facts of the chunks before it; with
    /// [`OnInvalid::RefuseBatch`] the first bad chunk is refused and the group ends there
    /// (the chunks before it are stored). The group's orders and customers are looked up
    /// once and each customer's facts written once, however many chunks touched them —
    /// that is what makes a stream cheaper than its chunks one by one.
    pub(crate) async fn record_order_chunks(
        &self,
        tenant: &str,
        chunks: Vec<OrderChunk>,
        on_invalid: OnInvalid,
        written: Option<&mut WrittenStates>,
    ) -> Result<GroupResult, ServiceError> {
        let group = self.prepare_chunks(chunks, on_invalid);
        self.record_prepared_chunks(tenant, group, on_invalid, written)
            .await
    }

    /// The second part of [`Self::record_order_chunks`]: the group's transaction.
    pub(crate) async fn record_prepared_chunks(
        &self,
        tenant: &str,
        group: PreparedGroup,
        on_invalid: OnInvalid,
        written: Option<&mut WrittenStates>,
    ) -> Result<GroupResult, ServiceError> {
        // 1. The shape of each order was checked when its chunk was prepared.
        let PreparedGroup {
            checked,
            mut refused,
        } = group;
        if checked.is_empty() {
            return Ok(GroupResult {
                stored: Vec::new(),
                refused,
            });
        }
        let now = self.clock.now();

        // 2. The group's stored orders and customers (their facts rows locked, in key order
        //    on PostgreSQL — the lookup's ORDER BY: one lock order for every writer), looked
        //    up once.
        let (_writer, txn) = self.begin_write().await?;
        let order_ids: Vec<String> = checked
            .iter()
            .flat_map(|c| c.chunk.orders.iter().map(|o| o.order_id.clone()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let stored = rows::orders(&txn, tenant, &order_ids).await?;
        let customer_ids: Vec<String> = checked
            .iter()
            .flat_map(|c| c.chunk.orders.iter().map(|o| o.customer_id.clone()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        // A unary batch keeps nothing (nor reads the write mark to keep it by).
        let keeping = written.is_some();
        let mut fresh = WrittenStates::default();
        let written = written.unwrap_or(&mut fresh);
        let mut states = written.look_up(&txn, tenant, customer_ids).await?;

        // 3. Each chunk in turn against what is stored and what the chunks before it did.
        let now_us = now.timestamp_micros();
        let mut recorded: HashMap<String, String> = HashMap::new();
        let mut writes = Writes::default();
        let mut results = Vec::with_capacity(checked.len());
        for CheckedChunk {
            chunk,
            mut problems,
            prepared,
        } in checked
        {
            let field = |i: usize, f: &str| format!("orders[{}].{f}", chunk.first_index + i);
            let mut outcomes = vec![OrderOutcome::Unspecified; chunk.orders.len()];
            let mut in_chunk: HashMap<&str, &str> = HashMap::new();
            for (i, o) in chunk.orders.iter().enumerate() {
                if problems[i].is_some() {
                    continue;
                }
                let earlier = stored
                    .get(&o.order_id)
                    .map(|s| s.fingerprint.as_str())
                    .or_else(|| recorded.get(&o.order_id).map(String::as_str))
                    .or_else(|| in_chunk.get(o.order_id.as_str()).copied());
                problems[i] = match earlier {
                    Some(fp) if fp == prepared[i].fingerprint => {
                        outcomes[i] = OrderOutcome::Duplicate;
                        None
                    }
                    Some(_) => Some((
                        FieldViolation::new(
                            field(i, "order_id"),
                            "already recorded with other content",
                        ),
                        ServiceError::already_exists_at("order", &o.order_id, field(i, "order_id")),
                    )),
                    None => {
                        let problem = customer_problem(o, &states, chunk.first_index + i);
                        if problem.is_none() {
                            in_chunk.insert(o.order_id.as_str(), prepared[i].fingerprint.as_str());
                            outcomes[i] = OrderOutcome::Recorded;
                        }
                        problem
                    }
                };
            }
            if on_invalid == OnInvalid::RefuseBatch
                && let Some((_, err)) = problems.iter_mut().find_map(Option::take)
            {
                refused = Some(err);
                break;
            }

            // 4. Queue the chunk's new orders: their rows and events now, their facts in
            //    the write below. A customer's first order sets the currency the chunks
            //    after it are checked against.
            let rejected = problems
                .into_iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    p.map(|(violation, _)| RejectedOrder {
                        index: (chunk.first_index + i) as i64,
                        order_id: chunk.orders[i].order_id.clone(),
                        field: violation.field,
                        reason: violation.description,
                    })
                })
                .collect();
            for ((o, prepared), outcome) in chunk.orders.into_iter().zip(prepared).zip(&outcomes) {
                if *outcome != OrderOutcome::Recorded {
                    continue;
                }
                if let Some(state) = states.get_mut(&o.customer_id)
                    && state.currency.is_empty()
                {
                    state.currency = o
                        .total
                        .as_ref()
                        .map(|m| m.currency.clone())
                        .unwrap_or_default();
                }
                recorded.insert(o.order_id.clone(), prepared.fingerprint.clone());
                writes.touched.insert(o.customer_id.clone());
                writes.recorded.push((o, prepared));
            }
            results.push(BatchResult { outcomes, rejected });
        }

        // 5. One write of the group's orders, events and facts.
        if writes.recorded.is_empty() {
            written.put_back(states);
        } else {
            let backend = txn.get_database_backend();
            // In key order: the facts rows are then written along their B-tree, not across it.
            let mut touched: Vec<String> = writes.touched.into_iter().collect();
            touched.sort_unstable();
            let change = rows::reserve_change_set(&txn).await?;
            let recorded = Arc::new(writes.recorded);
            let (for_rows, for_events) = (recorded.clone(), recorded.clone());
            let order_rows = (0..recorded.len()).map(move |i| {
                let (o, prepared) = &for_rows[i];
                order_row(o, prepared)
            });
            let events = (0..recorded.len())
                .map(move |i| (tenant.to_owned(), now, purchase_recorded(&for_events[i].0)));
            let mut write = GroupWrite {
                backend,
                tenant,
                rows: rows::order_statements(backend, tenant, order_rows)
                    .chain(self.outbox.append_statements(backend, events)),
                asked: 0,
                recorded,
                folded: 0,
                now_us,
                states,
                touched,
                facts_written: 0,
                change,
                change_set_written: false,
            };
            execute_all(&txn, &mut write).await?;
            let states = write.states;
            let mark = match keeping {
                true => Some(rows::facts_write_mark(&txn).await?),
                false => None,
            };
            txn.commit().await?;
            self.outbox.notify_committed();
            if let Some(mark) = mark {
                written.keep(backend, mark, states);
            }
        }
        Ok(GroupResult {
            stored: results,
            refused,
        })
    }

    /// Records a refund or a cancellation; idempotent by adjustment id.
    pub(crate) async fn adjust_order(
        &self,
        tenant: &str,
        req: AdjustOrderRequest,
    ) -> Result<CustomerFacts, ServiceError> {
        let mut v = Violations::default();
        validate::id(&mut v, "order_id", &req.order_id);
        validate::id(&mut v, "adjustment_id", &req.adjustment_id);
        let kind = AdjustmentKind::try_from(req.kind).unwrap_or(AdjustmentKind::Unspecified);
        if kind == AdjustmentKind::Unspecified {
            v.add("kind", "must be refund or cancellation");
        }
        if kind == AdjustmentKind::Refund {
            validate::money(&mut v, "amount", req.amount.as_ref());
            if req.amount.as_ref().is_some_and(|m| m.amount_minor == 0) {
                v.add("amount.amount_minor", "must be positive");
            }
        }
        if !v.is_empty() {
            return Err(ServiceError::InvalidArgument(v.0));
        }
        let now = self.clock.now();
        let occurred_us = req
            .occurred_at
            .as_ref()
            .map_or(now.timestamp_micros(), micros);
        let amount = req.amount.clone().unwrap_or_default();

        let (_writer, txn) = self.begin_write().await?;
        let order = rows::orders(&txn, tenant, std::slice::from_ref(&req.order_id))
            .await?
            .remove(&req.order_id)
            .ok_or_else(|| ServiceError::not_found_at("order", &req.order_id, "order_id"))?;
        let done = rows::query(
            &txn,
            "SELECT order_id, kind, amount_minor FROM order_adjustments WHERE tenant_id = $1 AND adjustment_id = $2",
            vec![tenant.into(), req.adjustment_id.clone().into()],
        )
        .await?;
        if let Some(row) = done.first() {
            let same = row.try_get::<String>("", "order_id")? == req.order_id
                && row.try_get::<i64>("", "kind")? == i64::from(req.kind)
                && row.try_get::<i64>("", "amount_minor")? == amount.amount_minor;
            drop(txn);
            return if same {
                self.facts(tenant, &order.customer_id).await
            } else {
                Err(ServiceError::already_exists_at(
                    "adjustment",
                    &req.adjustment_id,
                    "adjustment_id",
                ))
            };
        }
        let ids = [order.customer_id.clone()];
        let mut state = rows::facts_states(&txn, tenant, &ids)
            .await?
            .remove(&order.customer_id)
            .unwrap_or_default();
        let mut refunded = Money::default();
        match kind {
            AdjustmentKind::Refund => {
                if order.cancelled {
                    return Err(ServiceError::FailedPrecondition(
                        "order_id: the order is cancelled".into(),
                    ));
                }
                if amount.currency != order.currency {
                    return Err(ServiceError::invalid(
                        "amount.currency",
                        format!("the order is in {}", order.currency),
                    ));
                }
                if amount.amount_minor > order.total_minor - order.refunded_minor {
                    return Err(ServiceError::invalid(
                        "amount.amount_minor",
                        "exceeds what is left of the order total",
                    ));
                }
                rows::exec(
                    &txn,
                    "UPDATE orders SET refunded_minor = refunded_minor + $3 WHERE tenant_id = $1 AND order_id = $2",
                    vec![tenant.into(), req.order_id.clone().into(), amount.amount_minor.into()],
                )
                .await?;
                // Rebuilt from the orders: a refund on the first purchase day changes what
                // the repeat days spent, and the order's day is not in the state.
                let orders = rows::customer_order_facts(&txn, tenant, &order.customer_id).await?;
                state.recompute_orders(&orders);
                refunded = amount.clone();
            }
            _ => {
                if !order.cancelled {
                    rows::exec(
                        &txn,
                        "UPDATE orders SET cancelled = 1 WHERE tenant_id = $1 AND order_id = $2",
                        vec![tenant.into(), req.order_id.clone().into()],
                    )
                    .await?;
                    let remaining =
                        rows::customer_order_facts(&txn, tenant, &order.customer_id).await?;
                    state.recompute_orders(&remaining);
                }
            }
        }
        rows::exec(
            &txn,
            "INSERT INTO order_adjustments (tenant_id, adjustment_id, order_id, kind, amount_minor, occurred_at_us) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            vec![
                tenant.into(),
                req.adjustment_id.clone().into(),
                req.order_id.clone().into(),
                i64::from(req.kind).into(),
                amount.amount_minor.into(),
                occurred_us.into(),
            ],
        )
        .await?;
        state.updated_at_us = now.timestamp_micros();
        let facts = state.render(&order.customer_id);
        rows::save_facts(&txn, tenant, &[(&order.customer_id, &state)]).await?;
        self.outbox
            .append(
                &txn,
                tenant,
                now,
                Payload::OrderAdjusted(OrderAdjusted {
                    customer_id: order.customer_id.clone(),
                    order_id: req.order_id.clone(),
                    cancelled: kind == AdjustmentKind::Cancellation,
                    refunded: Some(refunded),
                }),
            )
            .await?;
        txn.commit().await?;
        self.outbox.notify_committed();
        Ok(facts)
    }
}
