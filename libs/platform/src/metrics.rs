//! Business metrics, exported over OTLP with the traces (`telemetry`): what an operator
//! watches besides call latency. Counters are made on first use from the global meter
//! provider, which `telemetry::init` sets at start.

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;

struct Business {
    messages_sent: Counter<u64>,
    steps_executed: Counter<u64>,
    coupons_redeemed: Counter<u64>,
    enrolments: Counter<u64>,
}

fn business() -> &'static Business {
    static BUSINESS: OnceLock<Business> = OnceLock::new();
    BUSINESS.get_or_init(|| {
        let meter = opentelemetry::global::meter("winback");
        let counter = |name: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_description(description)
                .build()
        };
        Business {
            messages_sent: counter(
                "winback.messages.sent",
                "messages a provider accepted, by channel",
            ),
            steps_executed: counter(
                "winback.steps.executed",
                "chain steps that reached an outcome, by outcome",
            ),
            coupons_redeemed: counter("winback.coupons.redeemed", "coupons redeemed"),
            enrolments: counter(
                "winback.enrolments",
                "enrolment decisions, by state (running, holdout, skipped)",
            ),
        }
    })
}

/// A provider accepted a message on `channel` (`email`, `sms`, …).
pub fn message_sent(tenant: &str, channel: &str) {
    business().messages_sent.add(
        1,
        &[
            KeyValue::new("tenant", tenant.to_owned()),
            KeyValue::new("channel", channel.to_owned()),
        ],
    );
}

/// `n` chain steps reached `outcome` (`sent`, `skipped_no_consent`, …).
pub fn steps_executed(tenant: &str, outcome: &str, n: u64) {
    business().steps_executed.add(
        n,
        &[
            KeyValue::new("tenant", tenant.to_owned()),
            KeyValue::new("outcome", outcome.to_owned()),
        ],
    );
}

/// A coupon was redeemed.
pub fn coupon_redeemed(tenant: &str) {
    business()
        .coupons_redeemed
        .add(1, &[KeyValue::new("tenant", tenant.to_owned())]);
}

/// `n` enrolment decisions ended in `state`.
pub fn enrolments(tenant: &str, state: &str, n: u64) {
    business().enrolments.add(
        n,
        &[
            KeyValue::new("tenant", tenant.to_owned()),
            KeyValue::new("state", state.to_owned()),
        ],
    );
}
