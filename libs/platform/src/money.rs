//! Money in every request: one ISO 4217 check for every service.

use winback_proto::common::Money;

use crate::FieldViolation;

/// ISO 4217 alphabetic codes in use.
pub const CURRENCIES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT",
    "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD",
    "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ",
    "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD",
    "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR",
    "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR",
    "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR",
    "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SYP", "SZL", "THB", "TJS",
    "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS", "VES",
    "VND", "VUV", "WST", "XAF", "XCD", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

/// True for an ISO 4217 alphabetic code in use (`RUB`, `EUR`, …).
pub fn is_currency(code: &str) -> bool {
    CURRENCIES.binary_search(&code).is_ok()
}

/// A violation naming `field.currency` when the money's currency is not ISO 4217.
pub fn check_currency(field: &str, money: &Money) -> Result<(), FieldViolation> {
    if is_currency(&money.currency) {
        Ok(())
    } else {
        Err(FieldViolation::new(
            format!("{field}.currency"),
            format!("{:?} is not an ISO 4217 currency code", money.currency),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_made_up_codes_are_refused() {
        assert!(CURRENCIES.windows(2).all(|w| w[0] < w[1]));
        assert!(is_currency("RUB") && is_currency("EUR"));
        for bad in ["ZZZ", "rub", "", "RUBL", "XXX"] {
            assert!(!is_currency(bad), "{bad}");
        }
        let zzz = Money {
            amount_minor: 1,
            currency: "ZZZ".into(),
        };
        assert_eq!(
            check_currency("budget.limit", &zzz).unwrap_err().field,
            "budget.limit.currency"
        );
    }
}
