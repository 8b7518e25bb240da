//! One mapping from domain errors to `tonic::Status`. Services turn their own errors into a
//! [`ServiceError`]; invalid input carries field-level `google.rpc.BadRequest` details.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, e.g. `customers[3].email`.
    pub field: String,
    /// What is wrong with it, in lowercase words.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// An error a service returns to its caller.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is invalid; nothing was stored.
    #[error("invalid argument: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// A named thing does not exist for this tenant.
    #[error("{kind} {id:?} not found{}", at(.field))]
    NotFound {
        /// What kind of thing, e.g. "customer".
        kind: &'static str,
        /// Its id.
        id: String,
        /// The request field that named it, e.g. `orders[3].customer_id`.
        field: Option<String>,
    },
    /// The thing exists already with other content.
    #[error("{kind} {id:?} already exists{}", at(.field))]
    AlreadyExists {
        /// What kind of thing.
        kind: &'static str,
        /// Its id.
        id: String,
        /// The request field that named it.
        field: Option<String>,
    },
    /// The operation does not fit the current state.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The caller is known but may not do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The caller is not known.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A quota or rate limit was hit.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// A tenant's quota was hit; the caller may retry after `retry_after`.
    #[error("resource exhausted: {description}")]
    QuotaExceeded {
        /// The limit, e.g. `calls_per_second`.
        limit: &'static str,
        /// What happened, in words.
        description: String,
        /// When to try again.
        retry_after: std::time::Duration,
    },
    /// A concurrent call is doing the same work; the caller may retry.
    #[error("aborted: {0}")]
    Aborted(String),
    /// A service this one depends on did not answer; the caller may retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Something broke inside; the caller sees no detail.
    #[error("internal error: {0}")]
    Internal(String),
}

fn at(field: &Option<String>) -> String {
    field
        .as_ref()
        .map(|f| format!(" ({f})"))
        .unwrap_or_default()
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ServiceError {
    /// An invalid-argument error for one field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// A not-found error.
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            id: id.into(),
            field: None,
        }
    }

    /// A not-found error naming the request field that pointed at the missing thing.
    pub fn not_found_at(
        kind: &'static str,
        id: impl Into<String>,
        field: impl Into<String>,
    ) -> Self {
        Self::NotFound {
            kind,
            id: id.into(),
            field: Some(field.into()),
        }
    }

    /// An already-exists error naming the request field.
    pub fn already_exists_at(
        kind: &'static str,
        id: impl Into<String>,
        field: impl Into<String>,
    ) -> Self {
        Self::AlreadyExists {
            kind,
            id: id.into(),
            field: Some(field.into()),
        }
    }

    /// An internal error from any source; the source is logged, not returned.
    pub fn internal(source: impl std::fmt::Display) -> Self {
        Self::Internal(source.to_string())
    }
}

impl From<sea_orm::DbErr> for ServiceError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::internal(err)
    }
}

impl From<ServiceError> for Status {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::InvalidArgument(violations) => {
                let message = format!("invalid argument: {}", describe(&violations));
                let mut details = ErrorDetails::new();
                for v in &violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            ServiceError::NotFound {
                kind,
                ref id,
                ref field,
            } => resource_status(Code::NotFound, kind, id, field.as_deref(), err.to_string()),
            ServiceError::AlreadyExists {
                kind,
                ref id,
                ref field,
            } => resource_status(
                Code::AlreadyExists,
                kind,
                id,
                field.as_deref(),
                err.to_string(),
            ),
            ServiceError::FailedPrecondition(m) => {
                let mut details = ErrorDetails::new();
                details.add_precondition_failure_violation("STATE", "", m.clone());
                Status::with_error_details(Code::FailedPrecondition, m, details)
            }
            ServiceError::PermissionDenied(m) => Status::permission_denied(m),
            ServiceError::Unauthenticated(m) => Status::unauthenticated(m),
            ServiceError::ResourceExhausted(m) => Status::resource_exhausted(m),
            ServiceError::QuotaExceeded {
                limit,
                description,
                retry_after,
            } => {
                let mut details = ErrorDetails::with_retry_info(Some(retry_after));
                details.add_quota_failure_violation(limit, description.clone());
                Status::with_error_details(
                    Code::ResourceExhausted,
                    format!("resource exhausted: {description}"),
                    details,
                )
            }
            ServiceError::Aborted(m) => Status::aborted(m),
            ServiceError::Unavailable(m) => Status::unavailable(m),
            ServiceError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

/// NOT_FOUND or ALREADY_EXISTS with `google.rpc.ResourceInfo` naming the kind and id, and
/// `BadRequest` naming the request field that pointed at it.
fn resource_status(
    code: Code,
    kind: &str,
    id: &str,
    field: Option<&str>,
    message: String,
) -> Status {
    let mut details = ErrorDetails::with_resource_info(kind, id, "", message.clone());
    if let Some(field) = field {
        details.add_bad_request_violation(field, message.clone());
    }
    Status::with_error_details(code, message, details)
}

/// Field violations of a status, for clients and tests.
pub fn field_violations(status: &Status) -> Vec<FieldViolation> {
    status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations
                .into_iter()
                .map(|v| FieldViolation::new(v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_field_level_bad_request_details() {
        let status: Status = ServiceError::InvalidArgument(vec![
            FieldViolation::new("customers[2].email", "not an email address"),
            FieldViolation::new("customers[5].phone", "not in E.164"),
        ])
        .into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("customers[2].email"));
        let violations = field_violations(&status);
        assert_eq!(violations.len(), 2);
        assert_eq!(violations[1].field, "customers[5].phone");
    }

    #[test]
    fn other_errors_carry_structured_details_too() {
        let missing: Status = ServiceError::not_found_at("coupon", "WB-1", "code").into();
        let info = missing.get_details_resource_info().expect("ResourceInfo");
        assert_eq!(
            (info.resource_type.as_str(), info.resource_name.as_str()),
            ("coupon", "WB-1")
        );
        assert_eq!(field_violations(&missing)[0].field, "code");
        let taken: Status = ServiceError::already_exists_at("tenant", "Shop", "name").into();
        assert_eq!(
            taken.get_details_resource_info().unwrap().resource_type,
            "tenant"
        );
        let state: Status =
            ServiceError::FailedPrecondition("the campaign is completed".into()).into();
        let failure = state
            .get_details_precondition_failure()
            .expect("PreconditionFailure");
        assert_eq!(
            failure.violations[0].description,
            "the campaign is completed"
        );
        let quota: Status = ServiceError::QuotaExceeded {
            limit: "calls_per_second",
            description: "over".into(),
            retry_after: std::time::Duration::from_millis(250),
        }
        .into();
        assert_eq!(quota.code(), Code::ResourceExhausted);
        assert_eq!(
            quota.get_details_retry_info().unwrap().retry_delay,
            Some(std::time::Duration::from_millis(250))
        );
    }

    #[test]
    fn each_error_kind_maps_to_its_code() {
        let cases: Vec<(ServiceError, Code)> = vec![
            (ServiceError::not_found("customer", "c1"), Code::NotFound),
            (
                ServiceError::already_exists_at("order", "o1", "orders[0].order_id"),
                Code::AlreadyExists,
            ),
            (
                ServiceError::FailedPrecondition("paused".into()),
                Code::FailedPrecondition,
            ),
            (
                ServiceError::PermissionDenied("scope".into()),
                Code::PermissionDenied,
            ),
            (
                ServiceError::Unauthenticated("token".into()),
                Code::Unauthenticated,
            ),
            (
                ServiceError::ResourceExhausted("quota".into()),
                Code::ResourceExhausted,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(Status::from(err).code(), code);
        }
    }

    #[test]
    fn internal_errors_hide_their_detail() {
        let status: Status = ServiceError::internal("password=secret in connection string").into();
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }
}
