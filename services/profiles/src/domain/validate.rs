//! What valid input is. Every check reports the field path (`orders[3].total.currency`),
//! so a rejected request names exactly what to fix.

use std::str::FromStr;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use winback_platform::FieldViolation;
use winback_proto::common::Money;
use winback_proto::profiles::{Customer, Order, PushToken};

/// Largest batch of a unary call.
pub(crate) const MAX_BATCH: usize = 1000;
/// How far in the future an order may be placed (clocks disagree a little).
pub(crate) const MAX_CLOCK_SKEW: Duration = Duration::minutes(5);
/// Largest amount accepted, in minor units (10¹⁵: a quadrillion kopecks).
pub(crate) const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;

/// Collects violations under a path prefix.
#[derive(Debug, Default)]
pub(crate) struct Violations(pub(crate) Vec<FieldViolation>);

impl Violations {
    pub(crate) fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What is wrong with an external id (1–128 characters, no control characters), if anything.
fn id_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() || value.chars().count() > 128 {
        Some("must be 1 to 128 characters")
    } else if value.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    }
}

/// An external id: 1–128 characters, no control characters.
pub(crate) fn id(v: &mut Violations, field: &str, value: &str) {
    if let Some(problem) = id_problem(value) {
        v.add(field, problem);
    }
}

pub(crate) fn email_ok(email: &str) -> bool {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    email.len() <= 254
        && !local.is_empty()
        && local.len() <= 64
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && !local.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

/// E.164: a plus, a non-zero digit, then 6 to 14 more digits.
pub(crate) fn phone_ok(phone: &str) -> bool {
    let Some(digits) = phone.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_digit())
        && !digits.starts_with('0')
}

pub(crate) fn time_zone_ok(zone: &str) -> bool {
    chrono_tz::Tz::from_str(zone).is_ok()
}

/// BCP 47 shape: a 2–3 letter language, then subtags of 2–8 letters or digits.
pub(crate) fn locale_ok(locale: &str) -> bool {
    let mut parts = locale.split('-');
    let lang_ok = parts
        .next()
        .is_some_and(|l| (2..=3).contains(&l.len()) && l.chars().all(|c| c.is_ascii_alphabetic()));
    lang_ok
        && parts.all(|p| (2..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// `YYYY-MM-DD` (a real date, not in the future) or `--MM-DD` (year unknown).
pub(crate) fn birthday_ok(birthday: &str, today: NaiveDate) -> bool {
    if let Some(month_day) = birthday.strip_prefix("--") {
        return NaiveDate::parse_from_str(&format!("2000-{month_day}"), "%Y-%m-%d").is_ok();
    }
    NaiveDate::parse_from_str(birthday, "%Y-%m-%d")
        .is_ok_and(|d| d <= today && d.year_ce().1 >= 1900)
}

use chrono::Datelike;

pub(crate) fn currency_ok(code: &str) -> bool {
    winback_platform::money::is_currency(code)
}

/// A customer of an upsert.
pub(crate) fn customer(v: &mut Violations, at: &str, c: &Customer, today: NaiveDate) {
    id(v, &format!("{at}.customer_id"), &c.customer_id);
    if c.name.chars().count() > 256 {
        v.add(format!("{at}.name"), "must be at most 256 characters");
    }
    if !c.email.is_empty() && !email_ok(&c.email) {
        v.add(format!("{at}.email"), "not an email address");
    }
    if !c.phone.is_empty() && !phone_ok(&c.phone) {
        v.add(
            format!("{at}.phone"),
            "not an E.164 number (e.g. +79161234567)",
        );
    }
    for (i, PushToken { platform, token }) in c.push_tokens.iter().enumerate() {
        if !matches!(platform.as_str(), "android" | "ios" | "web") {
            v.add(
                format!("{at}.push_tokens[{i}].platform"),
                "must be android, ios or web",
            );
        }
        if token.is_empty() || token.len() > 4096 {
            v.add(
                format!("{at}.push_tokens[{i}].token"),
                "must be 1 to 4096 characters",
            );
        }
    }
    if !c.locale.is_empty() && !locale_ok(&c.locale) {
        v.add(format!("{at}.locale"), "not a BCP 47 locale (e.g. ru-RU)");
    }
    if !c.time_zone.is_empty() && !time_zone_ok(&c.time_zone) {
        v.add(
            format!("{at}.time_zone"),
            "not an IANA time zone (e.g. Europe/Moscow)",
        );
    }
    if !c.birthday.is_empty() && !birthday_ok(&c.birthday, today) {
        v.add(
            format!("{at}.birthday"),
            "must be YYYY-MM-DD (a past date) or --MM-DD",
        );
    }
    if c.tags.len() > 100
        || c.tags
            .iter()
            .any(|t| t.is_empty() || t.chars().count() > 64)
    {
        v.add(
            format!("{at}.tags"),
            "at most 100 tags of 1 to 64 characters",
        );
    }
    if c.attributes.len() > 100 {
        v.add(format!("{at}.attributes"), "at most 100 attributes");
    }
}

/// An amount of money: a known currency, not negative, not absurd.
pub(crate) fn money(v: &mut Violations, at: &str, m: Option<&Money>) {
    money_at(v, &|| at.to_owned(), m);
}

/// [`money`] with the path built only when something is wrong (the ingest hot path).
fn money_at(v: &mut Violations, at: &dyn Fn() -> String, m: Option<&Money>) {
    let Some(m) = m else {
        v.add(at(), "is required");
        return;
    };
    if !currency_ok(&m.currency) {
        v.add(
            format!("{}.currency", at()),
            "not an ISO 4217 currency code",
        );
    }
    if m.amount_minor < 0 {
        v.add(format!("{}.amount_minor", at()), "must not be negative");
    } else if m.amount_minor > MAX_AMOUNT_MINOR {
        v.add(format!("{}.amount_minor", at()), "is too large");
    }
}

/// An order of a batch or stream. Field paths are only built for what is wrong: this runs
/// for every ingested order.
pub(crate) fn order(v: &mut Violations, at: &str, o: &Order, now: DateTime<Utc>) {
    let field = |f: &str| format!("{at}.{f}");
    if let Some(problem) = id_problem(&o.order_id) {
        v.add(field("order_id"), problem);
    }
    if let Some(problem) = id_problem(&o.customer_id) {
        v.add(field("customer_id"), problem);
    }
    match o
        .placed_at
        .as_ref()
        .and_then(winback_platform::time::from_timestamp)
    {
        None => v.add(field("placed_at"), "is required"),
        Some(t) if t > now + MAX_CLOCK_SKEW => v.add(field("placed_at"), "is in the future"),
        Some(t) if t.timestamp() < 0 => v.add(field("placed_at"), "is before 1970"),
        Some(_) => {}
    }
    money_at(v, &|| field("total"), o.total.as_ref());
    let currency = o
        .total
        .as_ref()
        .map(|m| m.currency.as_str())
        .unwrap_or_default();
    if o.lines.len() > 1000 {
        v.add(field("lines"), "at most 1000 lines");
    }
    for (i, line) in o.lines.iter().enumerate() {
        let here = || format!("{at}.lines[{i}]");
        if line.quantity < 1 {
            v.add(format!("{}.quantity", here()), "must be at least 1");
        }
        money_at(
            v,
            &|| format!("{}.unit_price", here()),
            line.unit_price.as_ref(),
        );
        if let Some(price) = &line.unit_price {
            if price.currency != currency {
                v.add(
                    format!("{}.unit_price.currency", here()),
                    "must be the order's currency",
                );
            }
            if price
                .amount_minor
                .checked_mul(i64::from(line.quantity))
                .is_none_or(|s| s > MAX_AMOUNT_MINOR)
            {
                v.add(
                    format!("{}.quantity", here()),
                    "quantity × unit price is too large",
                );
            }
        }
        if line.category.chars().count() > 128 || line.sku.chars().count() > 128 {
            v.add(here(), "sku and category are at most 128 characters");
        }
    }
    if o.store.chars().count() > 128 {
        v.add(field("store"), "must be at most 128 characters");
    }
    if o.coupon_code.chars().count() > 64 {
        v.add(field("coupon_code"), "must be at most 64 characters");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currencies_are_sorted_for_binary_search() {
        assert!(
            winback_platform::money::CURRENCIES
                .windows(2)
                .all(|w| w[0] < w[1])
        );
        assert!(
            currency_ok("RUB") && currency_ok("EUR") && !currency_ok("rub") && !currency_ok("XYZ")
        );
    }

    #[test]
    fn contacts_are_checked() {
        assert!(email_ok("anna@example.ru"));
        for bad in [
            "anna",
            "anna@",
            "@example.ru",
            "anna@example",
            "an na@example.ru",
            "a@b..ru",
        ] {
            assert!(!email_ok(bad), "{bad}");
        }
        assert!(phone_ok("+79161234567"));
        for bad in [
            "79161234567",
            "+0123456789",
            "+7 916 123",
            "+7916abc4567",
            "+12345",
        ] {
            assert!(!phone_ok(bad), "{bad}");
        }
        assert!(time_zone_ok("Europe/Moscow") && !time_zone_ok("Mars/Olympus"));
        assert!(locale_ok("ru-RU") && locale_ok("en") && !locale_ok("russian!"));
        let today = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
        assert!(birthday_ok("1990-02-28", today) && birthday_ok("--02-29", today));
        assert!(!birthday_ok("1990-02-30", today) && !birthday_ok("2030-01-01", today));
    }
}
