//! List calls page (`page_size`, `page_token`): the page size every service accepts.

use winback_proto::common::PageRequest;

use crate::ServiceError;

/// Page size from a request: 0 means 100, at most 1000; anything else is INVALID_ARGUMENT
/// naming `page.page_size`.
pub fn page_size(page: &PageRequest) -> Result<i64, ServiceError> {
    match page.page_size {
        0 => Ok(100),
        n if (1..=1000).contains(&n) => Ok(i64::from(n)),
        _ => Err(ServiceError::invalid(
            "page.page_size",
            "must be between 0 and 1000",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_a_hundred_and_the_limit_is_a_thousand() {
        let page = |n| PageRequest {
            page_size: n,
            page_token: String::new(),
        };
        assert_eq!(page_size(&page(0)).ok(), Some(100));
        assert_eq!(page_size(&page(1000)).ok(), Some(1000));
        assert!(page_size(&page(1001)).is_err());
        assert!(page_size(&page(-1)).is_err());
    }
}
