//! Orders: recorded in batches (unary or a client stream), idempotent by the tenant's
//! order id, each batch updating its customers' facts in the same transaction.

use std::collections::{HashMap, HashSet};

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
/// currency than the customer's orders so far. `at` is the order's field path.
fn customer_problem(o: &Order, states: &HashMap<String, FactsState>, at: &str) -> Problem {
    let customer_at = format!("{at}.customer_id");
    let Some(state) = states.get(&o.customer_id) else {
        return Some((
            FieldViolation::new(customer_at.clone(), "unknown customer"),
            ServiceError::not_found_at("customer", &o.customer_id, customer_at),
        ));
    };
    if state.erased {
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
        let currency_at = format!("{at}.total.currency");
        let why = format!("the customer's orders are in {known}");
        (
            FieldViolation::new(currency_at.clone(), why.clone()),
            ServiceError::invalid(currency_at, why),
        )
    })
}

/// The rows, facts and events a group of chunks will write.
#[derive(Default)]
struct Writes {
    orders: Vec<rows::NewOrder>,
    events: Vec<(String, chrono::DateTime<chrono::Utc>, Payload)>,
    touched: HashSet<String>,
}

impl Writes {
    /// Folds a new order into its customer's facts and queues its row and event.
    fn add(
        &mut self,
        tenant: &str,
        now: chrono::DateTime<chrono::Utc>,
        now_us: i64,
        o: &Order,
        fingerprint: &str,
        states: &mut HashMap<String, FactsState>,
    ) {
        let total = o.total.clone().unwrap_or_default();
        let placed_at_us = o.placed_at.as_ref().map(micros).unwrap_or_default();
        let spend = category_spend(o);
        let state = states.entry(o.customer_id.clone()).or_default();
        if state.currency.is_empty() {
            state.currency = total.currency.clone();
        }
        state.apply_order(&OrderFact {
            order_id: o.order_id.clone(),
            placed_at_us,
            total_minor: total.amount_minor,
            category_spend: spend.clone(),
        });
        state.updated_at_us = now_us;
        self.touched.insert(o.customer_id.clone());
        self.orders.push(rows::NewOrder {
            order_id: o.order_id.clone(),
            customer_id: o.customer_id.clone(),
            placed_at_us,
            currency: total.currency.clone(),
            total_minor: total.amount_minor,
            store: o.store.clone(),
            coupon_code: o.coupon_code.clone(),
            lines: serde_json::to_string(&spend).unwrap_or_default(),
            fingerprint: fingerprint.to_owned(),
        });
        self.events.push((
            tenant.to_owned(),
            now,
            Payload::PurchaseRecorded(PurchaseRecorded {
                customer_id: o.customer_id.clone(),
                order_id: o.order_id.clone(),
                placed_at: o.placed_at,
                total: Some(total),
                coupon_code: o.coupon_code.clone(),
                store: o.store.clone(),
            }),
        ));
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
        let now = self.clock.now();
        let mut refused = None;

        // 1. Shape of each order.
        let mut checked: Vec<(OrderChunk, Vec<Problem>)> = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            match shape_problems(&chunk, now, on_invalid) {
                Ok(problems) => checked.push((chunk, problems)),
                Err(err) => {
                    refused = Some(err);
                    break;
                }
            }
        }
        if checked.is_empty() {
            return Ok(GroupResult {
                stored: Vec::new(),
                refused,
            });
        }

        // 2. The group's stored orders and customers (their facts rows locked, in key order
        //    on PostgreSQL — the lookup's ORDER BY: one lock order for every writer), looked
        //    up once.
        let (_writer, txn) = self.begin_write().await?;
        let order_ids: Vec<String> = checked
            .iter()
            .flat_map(|(c, _)| c.orders.iter().map(|o| o.order_id.clone()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let stored = rows::orders(&txn, tenant, &order_ids).await?;
        let customer_ids: Vec<String> = checked
            .iter()
            .flat_map(|(c, _)| c.orders.iter().map(|o| o.customer_id.clone()))
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
        for (chunk, mut problems) in checked {
            let field = |i: usize, f: &str| format!("orders[{}].{f}", chunk.first_index + i);
            let fingerprints: Vec<String> = chunk.orders.iter().map(fingerprint).collect();
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
                    Some(fp) if fp == fingerprints[i] => {
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
                        let problem = customer_problem(
                            o,
                            &states,
                            &format!("orders[{}]", chunk.first_index + i),
                        );
                        if problem.is_none() {
                            in_chunk.insert(o.order_id.as_str(), fingerprints[i].as_str());
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

            // 4. Fold the chunk's new orders into the facts; queue the rows and events.
            for (i, o) in chunk.orders.iter().enumerate() {
                if outcomes[i] != OrderOutcome::Recorded {
                    continue;
                }
                writes.add(tenant, now, now_us, o, &fingerprints[i], &mut states);
                recorded.insert(o.order_id.clone(), fingerprints[i].clone());
            }
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
            results.push(BatchResult { outcomes, rejected });
        }

        // 5. One write of the group's orders, facts and events.
        if writes.orders.is_empty() {
            written.put_back(states);
        } else {
            // One chain of statements: each is built (facts rendered, events encoded) while
            // the one before it executes.
            let backend = txn.get_database_backend();
            let facts = rows::touched_states(&states, &writes.touched);
            let facts = rows::facts_statements(&txn, tenant, &facts).await?;
            let statements = rows::order_statements(backend, tenant, writes.orders)
                .chain(facts)
                .chain(self.outbox.append_statements(backend, writes.events));
            execute_all(&txn, statements).await?;
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
                state.apply_refund(&req.order_id, amount.amount_minor);
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
