//! Offer templates: what is valid, and what a coupon of a template gives on a cart.

use prost_types::Duration;
use winback_platform::ServiceError;
use winback_platform::error::FieldViolation;
use winback_proto::common::Money;
use winback_proto::offers::{Cart, IneligibleReason, OfferKind, OfferTemplate};

use super::code::normalize_prefix;

/// Validity when a template sets none: 72 hours (DOMAIN §5: 48–72 h for win-back).
pub(crate) const DEFAULT_VALID_FOR_SECONDS: i64 = 72 * 3600;

/// Longest validity from issue: a year.
const MAX_VALID_FOR_SECONDS: i64 = 365 * 86_400;

fn is_currency(c: &str) -> bool {
    winback_platform::money::is_currency(c)
}

/// Checks a template to create and fills its defaults; `now_seconds` for `valid_until`.
pub(crate) fn validate(
    mut t: OfferTemplate,
    now_seconds: i64,
) -> Result<OfferTemplate, ServiceError> {
    let mut v: Vec<FieldViolation> = Vec::new();
    let mut bad =
        |field: &str, why: &str| v.push(FieldViolation::new(format!("template.{field}"), why));
    let name = t.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 200 {
        bad("name", "a name of 1–200 characters is required");
    }
    t.name = name;
    let kind = OfferKind::try_from(t.kind).unwrap_or(OfferKind::Unspecified);
    let money_ok = |m: &Option<Money>| {
        m.as_ref()
            .is_some_and(|m| m.amount_minor > 0 && is_currency(&m.currency))
    };
    match kind {
        OfferKind::Unspecified => bad("kind", "an offer kind is required"),
        OfferKind::PercentOff if !(1..=100).contains(&t.percent_off) => {
            bad("percent_off", "must be 1–100")
        }
        OfferKind::AmountOff | OfferKind::Certificate | OfferKind::FreeShipping
            if !money_ok(&t.amount) =>
        {
            bad(
                "amount",
                "a positive amount with an ISO 4217 currency is required",
            )
        }
        OfferKind::BonusPoints if t.bonus_points <= 0 => bad("bonus_points", "must be positive"),
        OfferKind::Gift if t.gift_sku.trim().is_empty() => {
            bad("gift_sku", "is required for a gift")
        }
        OfferKind::ClosedSale if t.closed_sale_id.trim().is_empty() => {
            bad("closed_sale_id", "is required for a closed sale")
        }
        _ => {}
    }
    if kind != OfferKind::PercentOff && t.percent_off != 0 {
        bad("percent_off", "only for percent_off offers");
    }
    if !money_ok(&t.estimated_cost)
        && t.estimated_cost
            .as_ref()
            .is_some_and(|m| m.amount_minor != 0)
    {
        bad(
            "estimated_cost",
            "must be positive with an ISO 4217 currency",
        );
    }
    if t.estimated_cost
        .as_ref()
        .is_some_and(|m| m.amount_minor < 0)
    {
        bad("estimated_cost", "must not be negative");
    }
    let conditions = t.conditions.get_or_insert_with(Default::default);
    if let Some(min) = &conditions.min_order
        && (min.amount_minor < 0 || !is_currency(&min.currency))
    {
        bad(
            "conditions.min_order",
            "must not be negative and needs an ISO 4217 currency",
        );
    }
    if conditions.per_customer_limit < 0 {
        bad("conditions.per_customer_limit", "must not be negative");
    }
    if conditions.per_customer_limit == 0 {
        conditions.per_customer_limit = 1;
    }
    match (&t.valid_for, &t.valid_until) {
        (Some(_), Some(_)) => bad("valid_for", "give valid_for or valid_until, not both"),
        (Some(d), None) if d.seconds <= 0 || d.seconds > MAX_VALID_FOR_SECONDS => {
            bad("valid_for", "must be above zero and at most a year")
        }
        (None, Some(until)) if until.seconds <= now_seconds => bad("valid_until", "is in the past"),
        (None, None) => {
            t.valid_for = Some(Duration {
                seconds: DEFAULT_VALID_FOR_SECONDS,
                nanos: 0,
            })
        }
        _ => {}
    }
    if let Some(budget) = &t.budget {
        if budget.max_coupons < 0 {
            bad("budget.max_coupons", "must not be negative");
        }
        if budget
            .max_discount
            .as_ref()
            .is_some_and(|m| m.amount_minor < 0)
        {
            bad("budget.max_discount", "must not be negative");
        }
    }
    match normalize_prefix(&t.code_prefix) {
        Ok(prefix) => t.code_prefix = prefix,
        Err(e) => bad("code_prefix", &e.to_string()),
    }
    // One currency per template.
    let currencies: Vec<String> = [
        t.amount.clone(),
        t.estimated_cost.clone(),
        conditions_min(&t),
        t.budget.as_ref().and_then(|b| b.max_discount.clone()),
    ]
    .into_iter()
    .flatten()
    .map(|m| m.currency)
    .collect();
    if currencies.windows(2).any(|w| w[0] != w[1]) {
        bad(
            "estimated_cost",
            "every amount of a template must be in one currency",
        );
    }
    if v.is_empty() {
        Ok(t)
    } else {
        Err(ServiceError::InvalidArgument(v))
    }
}

fn conditions_min(t: &OfferTemplate) -> Option<Money> {
    t.conditions.as_ref().and_then(|c| c.min_order.clone())
}

/// The template's currency ("" when it names no amount).
pub(crate) fn currency(t: &OfferTemplate) -> String {
    [&t.amount, &t.estimated_cost, &conditions_min(t)]
        .into_iter()
        .flatten()
        .map(|m| m.currency.clone())
        .next()
        .unwrap_or_default()
}

/// When a coupon issued at `issued_at` expires.
pub(crate) fn expiry(t: &OfferTemplate, issued_at_seconds: i64) -> i64 {
    match (&t.valid_until, &t.valid_for) {
        (Some(until), _) => until.seconds,
        (None, Some(d)) => issued_at_seconds + d.seconds,
        (None, None) => issued_at_seconds + DEFAULT_VALID_FOR_SECONDS,
    }
}

/// What a coupon of `t` gives on `cart`, or why it cannot be used there.
pub(crate) fn discount_on(t: &OfferTemplate, cart: &Cart) -> Result<i64, IneligibleReason> {
    let conditions = t.conditions.clone().unwrap_or_default();
    let total = cart.total.as_ref().map_or(0, |m| m.amount_minor);
    let counted = |category: &str| !conditions.exclude_categories.iter().any(|c| c == category);
    // Lines in excluded categories count neither towards the minimum nor the discount.
    let eligible_total = if cart.lines.is_empty() {
        total
    } else {
        cart.lines
            .iter()
            .filter(|l| counted(&l.category))
            .map(|l| {
                i64::from(l.quantity.max(0)) * l.unit_price.as_ref().map_or(0, |m| m.amount_minor)
            })
            .sum()
    };
    if !conditions.include_categories.is_empty()
        && !cart
            .lines
            .iter()
            .any(|l| conditions.include_categories.contains(&l.category))
    {
        return Err(IneligibleReason::WrongCategory);
    }
    if !conditions.exclude_categories.is_empty() && !cart.lines.is_empty() && eligible_total == 0 {
        return Err(IneligibleReason::WrongCategory);
    }
    if conditions
        .min_order
        .as_ref()
        .is_some_and(|min| eligible_total < min.amount_minor)
    {
        return Err(IneligibleReason::BelowMinimum);
    }
    let amount = t.amount.as_ref().map_or(0, |m| m.amount_minor);
    Ok(
        match OfferKind::try_from(t.kind).unwrap_or(OfferKind::Unspecified) {
            OfferKind::PercentOff => eligible_total * i64::from(t.percent_off) / 100,
            OfferKind::AmountOff | OfferKind::Certificate => amount.min(eligible_total.max(0)),
            OfferKind::FreeShipping => amount,
            // Points, gifts and closed sales take nothing off the order: their cost is the
            // template's estimate.
            OfferKind::BonusPoints
            | OfferKind::Gift
            | OfferKind::ClosedSale
            | OfferKind::Unspecified => 0,
        },
    )
}

/// The real cost of a redemption: the discount for money offers, the estimate otherwise.
pub(crate) fn real_cost(t: &OfferTemplate, discount: i64) -> i64 {
    match OfferKind::try_from(t.kind).unwrap_or(OfferKind::Unspecified) {
        OfferKind::PercentOff
        | OfferKind::AmountOff
        | OfferKind::Certificate
        | OfferKind::FreeShipping => discount,
        _ => t.estimated_cost.as_ref().map_or(0, |m| m.amount_minor),
    }
}

#[cfg(test)]
mod tests {
    use prost_types::Timestamp;
    use winback_proto::offers::{CartLine, OfferConditions};

    use super::*;

    fn ts(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

    fn rub(minor: i64) -> Option<Money> {
        Some(Money {
            amount_minor: minor,
            currency: "RUB".into(),
        })
    }

    fn percent(p: i32) -> OfferTemplate {
        OfferTemplate {
            name: "10 % back".into(),
            kind: OfferKind::PercentOff as i32,
            percent_off: p,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_filled_and_bad_fields_named() {
        let t = validate(percent(10), 0).unwrap();
        assert_eq!(t.valid_for.unwrap().seconds, 72 * 3600);
        assert_eq!(t.conditions.unwrap().per_customer_limit, 1);
        let Err(ServiceError::InvalidArgument(v)) = validate(
            OfferTemplate {
                code_prefix: "IO".into(),
                valid_until: ts(5),
                ..percent(101)
            },
            10,
        ) else {
            panic!("accepted")
        };
        let fields: Vec<&str> = v.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "template.percent_off",
                "template.valid_until",
                "template.code_prefix"
            ]
        );
        let Err(ServiceError::InvalidArgument(v)) = validate(
            OfferTemplate {
                name: "x".into(),
                kind: OfferKind::AmountOff as i32,
                amount: rub(-5),
                ..Default::default()
            },
            0,
        ) else {
            panic!("accepted")
        };
        assert_eq!(v[0].field, "template.amount");
    }

    #[test]
    fn the_discount_follows_the_kind_and_the_conditions() {
        let line = |category: &str, price: i64| CartLine {
            sku: "s".into(),
            category: category.into(),
            quantity: 2,
            unit_price: rub(price),
        };
        let cart = Cart {
            total: rub(10_000),
            lines: vec![line("shoes", 3_000), line("gift cards", 2_000)],
        };
        let mut t = percent(10);
        t.conditions = Some(OfferConditions {
            exclude_categories: vec!["gift cards".into()],
            ..Default::default()
        });
        assert_eq!(
            discount_on(&t, &cart),
            Ok(600),
            "10 % of the 6,000 not in gift cards"
        );
        t.conditions = Some(OfferConditions {
            min_order: rub(7_000),
            exclude_categories: vec!["gift cards".into()],
            ..Default::default()
        });
        assert_eq!(discount_on(&t, &cart), Err(IneligibleReason::BelowMinimum));
        t.conditions = Some(OfferConditions {
            include_categories: vec!["bags".into()],
            ..Default::default()
        });
        assert_eq!(discount_on(&t, &cart), Err(IneligibleReason::WrongCategory));
        let amount = OfferTemplate {
            kind: OfferKind::AmountOff as i32,
            amount: rub(50_000),
            percent_off: 0,
            ..t.clone()
        };
        let amount = OfferTemplate {
            conditions: None,
            ..amount
        };
        assert_eq!(
            discount_on(&amount, &cart),
            Ok(10_000),
            "never more than the order"
        );
        let points = OfferTemplate {
            kind: OfferKind::BonusPoints as i32,
            bonus_points: 500,
            estimated_cost: rub(250),
            conditions: None,
            ..t
        };
        assert_eq!(discount_on(&points, &cart), Ok(0));
        assert_eq!(real_cost(&points, 0), 250);
    }
}
