//! `winback import`: customers, orders and engagement events from CSV files into the
//! profiles service of a running stack, through its gRPC contract. Every good row is kept;
//! the report lists each rejected row by file and line with the reason. The columns are
//! documented in `docs/import.md`.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use winback_platform::error::field_violations;
use winback_platform::grpc::CallCredentials;
use winback_proto::common::{Channel as ContactChannel, MessagePurpose, Money};
use winback_proto::profiles::engagement_event::Kind;
use winback_proto::profiles::profiles_service_client::ProfilesServiceClient;
use winback_proto::profiles::*;

type Client = ProfilesServiceClient<InterceptedService<Channel, CallCredentials>>;

const BATCH: usize = 1000;

/// Why an import could not run at all (a bad row is never such a reason).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file could not be read.
    #[error("{file}: {source}")]
    File {
        /// The file.
        file: String,
        /// Why.
        source: csv::Error,
    },
    /// The file lacks a required column.
    #[error("{file}: missing column {column:?}")]
    Column {
        /// The file.
        file: String,
        /// The column.
        column: &'static str,
    },
    /// The service refused the whole call (auth, unavailable).
    #[error("profiles service: {0}")]
    Service(#[from] tonic::Status),
}

/// A row the import did not keep.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rejected {
    /// File name.
    pub file: String,
    /// 1-based line number in the file (the header is line 1).
    pub line: u64,
    /// Why.
    pub reason: String,
}

/// What one file gave.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct FileReport {
    /// File name.
    pub file: String,
    /// Data rows read.
    pub rows: u64,
    /// Records stored (customers, orders or events).
    pub stored: u64,
    /// Records already stored before (idempotent re-import).
    pub duplicates: u64,
    /// Rows rejected.
    pub rejected: Vec<Rejected>,
}

/// The client for `tenant`'s data at `addr`.
pub fn client(addr: &str, token: &str) -> Result<Client, ImportError> {
    let channel = winback_platform::grpc::lazy_channel(addr)
        .map_err(|e| tonic::Status::invalid_argument(format!("addr: {e}")))?;
    Ok(
        ProfilesServiceClient::with_interceptor(channel, CallCredentials::bearer(token)?)
            .max_decoding_message_size(64 * 1024 * 1024),
    )
}

fn progress(path: &Path) -> ProgressBar {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>14} [{bar:30}] {bytes}/{total_bytes} {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    bar
}

/// Reads a CSV file's rows as maps from column to value, with their line numbers.
struct Rows {
    file: String,
    reader: csv::Reader<BufReader<File>>,
    headers: Vec<String>,
    bar: ProgressBar,
}

impl Rows {
    fn open(path: &Path, required: &[&'static str]) -> Result<Self, ImportError> {
        let file = path.display().to_string();
        let err = |source| ImportError::File {
            file: file.clone(),
            source,
        };
        let handle = File::open(path).map_err(|e| err(csv::Error::from(e)))?;
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(BufReader::new(handle));
        let headers: Vec<String> = reader
            .headers()
            .map_err(err)?
            .iter()
            .map(str::to_lowercase)
            .collect();
        for column in required {
            if !headers.iter().any(|h| h == column) {
                return Err(ImportError::Column {
                    file: file.clone(),
                    column,
                });
            }
        }
        Ok(Self {
            file,
            reader,
            headers,
            bar: progress(path),
        })
    }

    /// The next row: (line, columns), or a line that does not parse.
    fn next(&mut self) -> Option<Result<(u64, Row), Rejected>> {
        let mut record = csv::StringRecord::new();
        match self.reader.read_record(&mut record) {
            Ok(false) => None,
            Ok(true) => {
                let line = record.position().map_or(0, |p| p.line());
                self.bar
                    .set_position(record.position().map_or(0, |p| p.byte()));
                let row = self
                    .headers
                    .iter()
                    .cloned()
                    .zip(record.iter().map(str::to_owned))
                    .collect();
                Some(Ok((line, row)))
            }
            Err(e) => Some(Err(Rejected {
                file: self.file.clone(),
                line: e.position().map_or(0, |p| p.line()),
                reason: e.to_string(),
            })),
        }
    }
}

/// A CSV row: column name to value.
type Row = HashMap<String, String>;

fn get<'a>(row: &'a Row, column: &str) -> &'a str {
    row.get(column).map(String::as_str).unwrap_or_default()
}

/// Digits after the decimal point of a currency's minor unit.
fn exponent(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// A decimal amount in major units ("1500.50") as minor units, exactly.
pub fn minor_units(amount: &str, currency: &str) -> Result<i64, String> {
    let digits = exponent(currency);
    let (whole, fraction) = amount.split_once('.').unwrap_or((amount, ""));
    let negative = whole.starts_with('-');
    let whole = whole.trim_start_matches('-');
    if whole.is_empty()
        || !whole.chars().all(|c| c.is_ascii_digit())
        || !fraction.chars().all(|c| c.is_ascii_digit())
    {
        return Err(format!("amount {amount:?} is not a decimal number"));
    }
    if fraction.len() > digits as usize {
        return Err(format!(
            "amount {amount:?} has more than {digits} decimals for {currency}"
        ));
    }
    let scale = 10i64.pow(digits);
    let whole: i64 = whole
        .parse()
        .map_err(|_| format!("amount {amount:?} is too large"))?;
    let fraction: i64 = if fraction.is_empty() {
        0
    } else {
        format!("{fraction:0<width$}", width = digits as usize)
            .parse()
            .unwrap_or(0)
    };
    let value = whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(fraction))
        .ok_or_else(|| format!("amount {amount:?} is too large"))?;
    Ok(if negative { -value } else { value })
}

fn timestamp(value: &str) -> Result<Option<prost_types::Timestamp>, String> {
    if value.is_empty() {
        return Err("time is required".into());
    }
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| Some(winback_platform::time::to_timestamp(t.to_utc())))
        .or_else(|_| {
            chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").map(|d| {
                d.and_hms_opt(12, 0, 0)
                    .map(|t| winback_platform::time::to_timestamp(t.and_utc()))
            })
        })
        .map_err(|_| format!("time {value:?} is neither RFC 3339 nor YYYY-MM-DD"))
}

/// The request index a service error points at (`customers[12].email` → 12).
fn index_in(text: &str, list: &str) -> Option<usize> {
    let start = text.find(&format!("{list}["))? + list.len() + 1;
    text[start..].split(']').next()?.parse().ok()
}

/// Sends a batch through an all-or-nothing call; on a refusal that names rows, drops those
/// rows (reporting them) and sends the rest again.
async fn send_batch<T: Clone, F, Fut>(
    list: &str,
    mut batch: Vec<(u64, T)>,
    report: &mut FileReport,
    mut call: F,
) -> Result<(), ImportError>
where
    F: FnMut(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = Result<(u64, u64), tonic::Status>>,
{
    while !batch.is_empty() {
        match call(batch.iter().map(|(_, t)| t.clone()).collect()).await {
            Ok((stored, duplicates)) => {
                report.stored += stored;
                report.duplicates += duplicates;
                return Ok(());
            }
            Err(status)
                if matches!(
                    status.code(),
                    Code::InvalidArgument
                        | Code::NotFound
                        | Code::FailedPrecondition
                        | Code::AlreadyExists
                ) =>
            {
                let mut bad: Vec<(usize, String)> = field_violations(&status)
                    .into_iter()
                    .filter_map(|v| {
                        index_in(&v.field, list)
                            .map(|i| (i, format!("{}: {}", v.field, v.description)))
                    })
                    .collect();
                if bad.is_empty() {
                    match index_in(status.message(), list) {
                        Some(i) => bad.push((i, status.message().to_owned())),
                        None => return Err(status.into()),
                    }
                }
                bad.sort_by_key(|b| std::cmp::Reverse(b.0));
                bad.dedup_by_key(|b| b.0);
                for (i, reason) in bad {
                    if i < batch.len() {
                        let (line, _) = batch.remove(i);
                        report.rejected.push(Rejected {
                            file: report.file.clone(),
                            line,
                            reason,
                        });
                    }
                }
            }
            Err(status) => return Err(status.into()),
        }
    }
    Ok(())
}

/// The latest time in a column of a file (`placed_at` of orders, `occurred_at` of events;
/// rows that do not parse are skipped here and reported by the import itself): where a
/// replay of the history starts its clock.
pub fn latest_time(
    path: &Path,
    column: &'static str,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ImportError> {
    let mut rows = Rows::open(path, &[column])?;
    let mut last = None;
    while let Some(next) = rows.next() {
        let Ok((_, row)) = next else { continue };
        let Ok(Some(at)) = timestamp(get(&row, column)) else {
            continue;
        };
        last = last.max(winback_platform::time::from_timestamp(&at));
    }
    rows.bar.finish_and_clear();
    Ok(last)
}

/// Imports customers (and their advertising consents).
pub async fn customers(client: &mut Client, path: &Path) -> Result<FileReport, ImportError> {
    const KNOWN: &[&str] = &[
        "customer_id",
        "name",
        "email",
        "phone",
        "locale",
        "time_zone",
        "birthday",
        "tags",
        "push_platform",
        "push_token",
        "email_consent",
        "sms_consent",
        "push_consent",
    ];
    let mut rows = Rows::open(path, &["customer_id"])?;
    let mut report = FileReport {
        file: rows.file.clone(),
        ..FileReport::default()
    };
    let mut consents: Vec<(u64, String, ContactChannel, bool)> = Vec::new();
    // Kept apart until the customers are in: they do not reject the customer's row.
    let mut unclear_consents = Vec::new();
    let mut batch = Vec::new();
    while let Some(next) = rows.next() {
        let (line, row) = match next {
            Ok(row) => row,
            Err(rejected) => {
                report.rejected.push(rejected);
                continue;
            }
        };
        report.rows += 1;
        let customer = Customer {
            customer_id: get(&row, "customer_id").to_owned(),
            name: get(&row, "name").to_owned(),
            email: get(&row, "email").to_owned(),
            phone: get(&row, "phone").to_owned(),
            locale: get(&row, "locale").to_owned(),
            time_zone: get(&row, "time_zone").to_owned(),
            birthday: get(&row, "birthday").to_owned(),
            tags: get(&row, "tags")
                .split(';')
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
            push_tokens: if get(&row, "push_token").is_empty() {
                Vec::new()
            } else {
                vec![PushToken {
                    platform: get(&row, "push_platform").to_owned(),
                    token: get(&row, "push_token").to_owned(),
                }]
            },
            attributes: row
                .iter()
                .filter(|(k, v)| !KNOWN.contains(&k.as_str()) && !v.is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..Customer::default()
        };
        for (column, channel) in [
            ("email_consent", ContactChannel::Email),
            ("sms_consent", ContactChannel::Sms),
            ("push_consent", ContactChannel::Push),
        ] {
            match get(&row, column).to_lowercase().as_str() {
                "" => {}
                "yes" | "true" | "1" => {
                    consents.push((line, customer.customer_id.clone(), channel, true))
                }
                "no" | "false" | "0" => {
                    consents.push((line, customer.customer_id.clone(), channel, false))
                }
                other => unclear_consents.push(Rejected {
                    file: report.file.clone(),
                    line,
                    reason: format!("{column}: {other:?} is not yes or no (the customer is kept)"),
                }),
            }
        }
        batch.push((line, customer));
        if batch.len() == BATCH {
            upsert(client, std::mem::take(&mut batch), &mut report).await?;
        }
    }
    upsert(client, batch, &mut report).await?;
    rows.bar.finish_and_clear();
    // A rejected customer's consents would only be rejected again.
    let kept = |line: &u64| !report.rejected.iter().any(|r| r.line == *line);
    consents.retain(|(line, ..)| kept(line));
    for chunk in consents.chunks(BATCH) {
        record_consents(client, chunk, &mut report).await?;
    }
    report.rejected.append(&mut unclear_consents);
    report.rejected.sort_by_key(|r| r.line);
    Ok(report)
}

/// Advertising consents of imported customers, a batch per call (a refused row is reported
/// and the rest sent again).
async fn record_consents(
    client: &mut Client,
    chunk: &[(u64, String, ContactChannel, bool)],
    report: &mut FileReport,
) -> Result<(), ImportError> {
    let batch = chunk
        .iter()
        .map(|(line, customer_id, channel, granted)| {
            let request = RecordConsentRequest {
                request_id: String::new(),
                customer_id: customer_id.clone(),
                consent: Some(ConsentRecord {
                    channel: *channel as i32,
                    purpose: MessagePurpose::Advertising as i32,
                    granted: *granted,
                    source: "import".into(),
                    recorded_at: None,
                }),
                do_not_contact: false,
            };
            (*line, request)
        })
        .collect();
    // Consents are not counted as stored records of the file: keep the customers' count.
    let stored = report.stored;
    send_batch("consents", batch, report, |consents| {
        let mut client = client.clone();
        async move {
            client
                .record_consents(RecordConsentsRequest { consents })
                .await?;
            Ok((0, 0))
        }
    })
    .await?;
    report.stored = stored;
    Ok(())
}

async fn upsert(
    client: &mut Client,
    batch: Vec<(u64, Customer)>,
    report: &mut FileReport,
) -> Result<(), ImportError> {
    send_batch("customers", batch, report, |customers| {
        let mut client = client.clone();
        async move {
            let reply = client
                .upsert_customers(UpsertCustomersRequest {
                    update_mask: None,
                    customers,
                })
                .await?
                .into_inner();
            Ok((u64::try_from(reply.created + reply.updated).unwrap_or(0), 0))
        }
    })
    .await
}

/// Imports orders: one row per order line; consecutive rows with the same `order_id` are
/// one order.
pub async fn orders(client: &mut Client, path: &Path) -> Result<FileReport, ImportError> {
    let mut rows = Rows::open(
        path,
        &["order_id", "customer_id", "placed_at", "total", "currency"],
    )?;
    let mut report = FileReport {
        file: rows.file.clone(),
        ..FileReport::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<StreamOrdersRequest>(4);
    let mut stream_client = client.clone();
    let sender = tokio::spawn(async move {
        stream_client
            .stream_orders(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map(|r| r.into_inner())
    });
    let mut lines_of_order: Vec<u64> = Vec::new();
    let mut chunk: Vec<Order> = Vec::new();
    let mut first_chunk = true;
    while let Some(next) = rows.next() {
        let (line, row) = match next {
            Ok(row) => row,
            Err(rejected) => {
                report.rejected.push(rejected);
                continue;
            }
        };
        report.rows += 1;
        let currency = get(&row, "currency").to_uppercase();
        let parsed = (|| -> Result<(Order, Option<OrderLine>), String> {
            let money = |column: &str| -> Result<Option<Money>, String> {
                Ok(Some(Money {
                    amount_minor: minor_units(get(&row, column), &currency)
                        .map_err(|e| format!("{column}: {e}"))?,
                    currency: currency.clone(),
                }))
            };
            let order = Order {
                order_id: get(&row, "order_id").to_owned(),
                customer_id: get(&row, "customer_id").to_owned(),
                placed_at: timestamp(get(&row, "placed_at"))
                    .map_err(|e| format!("placed_at: {e}"))?,
                total: money("total")?,
                lines: Vec::new(),
                store: get(&row, "store").to_owned(),
                coupon_code: get(&row, "coupon_code").to_owned(),
            };
            let line = if get(&row, "sku").is_empty() && get(&row, "category").is_empty() {
                None
            } else {
                Some(OrderLine {
                    sku: get(&row, "sku").to_owned(),
                    category: get(&row, "category").to_owned(),
                    quantity: get(&row, "quantity").parse().unwrap_or(1),
                    unit_price: if get(&row, "unit_price").is_empty() {
                        None
                    } else {
                        money("unit_price")?
                    },
                })
            };
            Ok((order, line))
        })();
        match parsed {
            Err(reason) => report.rejected.push(Rejected {
                file: report.file.clone(),
                line,
                reason,
            }),
            Ok((order, order_line)) => {
                match chunk.last_mut() {
                    Some(last) if last.order_id == order.order_id => last.lines.extend(order_line),
                    _ => {
                        let mut order = order;
                        order.lines.extend(order_line);
                        chunk.push(order);
                        lines_of_order.push(line);
                    }
                }
                if chunk.len() > BATCH {
                    // Keep the open order for its next lines; send the rest.
                    let open = chunk.pop();
                    let orders = std::mem::replace(&mut chunk, open.into_iter().collect());
                    if tx
                        .send(StreamOrdersRequest {
                            orders,
                            skip_invalid: true,
                        })
                        .await
                        .is_err()
                    {
                        break;
                    }
                    first_chunk = false;
                }
            }
        }
    }
    if !chunk.is_empty() || first_chunk {
        let _ = tx
            .send(StreamOrdersRequest {
                orders: chunk,
                skip_invalid: true,
            })
            .await;
    }
    drop(tx);
    rows.bar.finish_and_clear();
    let reply = sender
        .await
        .map_err(|e| tonic::Status::internal(e.to_string()))??;
    report.stored = reply.recorded as u64;
    report.duplicates = reply.duplicates as u64;
    for rejected in reply.rejected {
        report.rejected.push(Rejected {
            file: report.file.clone(),
            line: lines_of_order
                .get(rejected.index as usize)
                .copied()
                .unwrap_or(0),
            reason: format!("{}: {}", rejected.field, rejected.reason),
        });
    }
    report.rejected.sort_by_key(|r| r.line);
    Ok(report)
}

/// Imports engagement events.
pub async fn events(client: &mut Client, path: &Path) -> Result<FileReport, ImportError> {
    let mut rows = Rows::open(path, &["event_id", "customer_id", "occurred_at", "kind"])?;
    let mut report = FileReport {
        file: rows.file.clone(),
        ..FileReport::default()
    };
    let mut batch = Vec::new();
    while let Some(next) = rows.next() {
        let (line, row) = match next {
            Ok(row) => row,
            Err(rejected) => {
                report.rejected.push(rejected);
                continue;
            }
        };
        report.rows += 1;
        let parsed = (|| -> Result<EngagementEvent, String> {
            let message_id = get(&row, "message_id").to_owned();
            let kind = match get(&row, "kind") {
                "message_opened" => Kind::MessageOpened(MessageOpened {
                    message_id,
                    channel: 0,
                }),
                "message_clicked" => Kind::MessageClicked(MessageClicked {
                    message_id,
                    channel: 0,
                    url: get(&row, "url").to_owned(),
                }),
                "message_sent" => Kind::MessageSent(MessageSent {
                    message_id,
                    channel: 0,
                }),
                "site_visited" => Kind::SiteVisited(SiteVisited {
                    page: get(&row, "url").to_owned(),
                }),
                "cart_abandoned" => {
                    let currency = get(&row, "currency").to_uppercase();
                    let value = if get(&row, "value").is_empty() {
                        None
                    } else {
                        Some(Money {
                            amount_minor: minor_units(get(&row, "value"), &currency)
                                .map_err(|e| format!("value: {e}"))?,
                            currency,
                        })
                    };
                    Kind::CartAbandoned(CartAbandoned {
                        value,
                        lines: vec![],
                    })
                }
                "product_viewed" => Kind::ProductViewed(ProductViewed {
                    sku: get(&row, "sku").to_owned(),
                    category: get(&row, "category").to_owned(),
                }),
                "searched" => Kind::Searched(Searched {
                    query: get(&row, "query").to_owned(),
                }),
                "support_contacted" => Kind::SupportContacted(SupportContacted {
                    topic: get(&row, "query").to_owned(),
                }),
                "complained" => Kind::Complained(Complained {
                    channel: 0,
                    do_not_contact: matches!(get(&row, "do_not_contact"), "yes" | "true" | "1"),
                    text: get(&row, "query").to_owned(),
                }),
                other => return Err(format!("kind: {other:?} is not a known engagement kind")),
            };
            Ok(EngagementEvent {
                event_id: get(&row, "event_id").to_owned(),
                customer_id: get(&row, "customer_id").to_owned(),
                occurred_at: timestamp(get(&row, "occurred_at"))
                    .map_err(|e| format!("occurred_at: {e}"))?,
                kind: Some(kind),
            })
        })();
        match parsed {
            Ok(event) => batch.push((line, event)),
            Err(reason) => report.rejected.push(Rejected {
                file: report.file.clone(),
                line,
                reason,
            }),
        }
        if batch.len() == BATCH {
            record_events(client, std::mem::take(&mut batch), &mut report).await?;
        }
    }
    record_events(client, batch, &mut report).await?;
    rows.bar.finish_and_clear();
    report.rejected.sort_by_key(|r| r.line);
    Ok(report)
}

async fn record_events(
    client: &mut Client,
    batch: Vec<(u64, EngagementEvent)>,
    report: &mut FileReport,
) -> Result<(), ImportError> {
    send_batch("events", batch, report, |events| {
        let mut client = client.clone();
        async move {
            let reply = client
                .record_engagement(RecordEngagementRequest { events })
                .await?
                .into_inner();
            Ok((reply.recorded as u64, reply.duplicates as u64))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_convert_to_minor_units_exactly() {
        assert_eq!(minor_units("1500", "RUB"), Ok(150_000));
        assert_eq!(minor_units("1500.5", "RUB"), Ok(150_050));
        assert_eq!(minor_units("0.07", "EUR"), Ok(7));
        assert_eq!(minor_units("1500", "JPY"), Ok(1500));
        assert_eq!(minor_units("1.234", "KWD"), Ok(1234));
        assert!(minor_units("1.234", "RUB").is_err());
        assert!(minor_units("12,50", "RUB").is_err());
        assert!(minor_units("99999999999999999999", "RUB").is_err());
    }

    #[test]
    fn the_row_a_service_error_names_is_found() {
        assert_eq!(index_in("customers[12].email", "customers"), Some(12));
        assert_eq!(
            index_in("customer \"x\" not found (events[3].customer_id)", "events"),
            Some(3)
        );
        assert_eq!(index_in("orders", "orders"), None);
    }
}
