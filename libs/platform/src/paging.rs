//! List calls page (`page_size`, `page_token`), the same way in every service.
//!
//! A page token is opaque and tamper-evident: the service's cursor (the last key of the
//! page) with an HMAC-SHA256 over the tenant, the call, the request's filters (the whole
//! request but its page) and the cursor. A token from another call, another tenant or
//! other filters, an edited token or garbage is `INVALID_ARGUMENT` naming
//! `page.page_token`. The MAC key is derived from the secrets key file
//! (`auth.secrets_key_file`), which replicas share, so any replica reads a token another
//! issued; a process given no key file uses a random key of its own.

use std::future::Future;
use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use winback_proto::common::{PageRequest, PageResponse};

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

/// A list request: it has a page.
pub trait PagedRequest: prost::Message + Sized {
    /// The request's page.
    fn page_mut(&mut self) -> &mut Option<PageRequest>;
}

/// A list response: it has a next page.
pub trait PagedResponse {
    /// The response's page.
    fn page_mut(&mut self) -> &mut Option<PageResponse>;
}

macro_rules! paged {
    ($($request:ty => $response:ty),* $(,)?) => {$(
        impl PagedRequest for $request {
            fn page_mut(&mut self) -> &mut Option<PageRequest> {
                &mut self.page
            }
        }
        impl PagedResponse for $response {
            fn page_mut(&mut self) -> &mut Option<PageResponse> {
                &mut self.page
            }
        }
    )*};
}

paged! {
    winback_proto::campaigns::ListChainsRequest => winback_proto::campaigns::ListChainsResponse,
    winback_proto::campaigns::ListCampaignsRequest => winback_proto::campaigns::ListCampaignsResponse,
    winback_proto::campaigns::ListEnrolmentsRequest => winback_proto::campaigns::ListEnrolmentsResponse,
    winback_proto::delivery::ListTemplatesRequest => winback_proto::delivery::ListTemplatesResponse,
    winback_proto::delivery::ListMessagesRequest => winback_proto::delivery::ListMessagesResponse,
    winback_proto::delivery::ListSuppressionsRequest => winback_proto::delivery::ListSuppressionsResponse,
    winback_proto::offers::ListOfferTemplatesRequest => winback_proto::offers::ListOfferTemplatesResponse,
    winback_proto::offers::ListLaddersRequest => winback_proto::offers::ListLaddersResponse,
    winback_proto::offers::ListCouponsRequest => winback_proto::offers::ListCouponsResponse,
    winback_proto::offers::ListFraudSignalsRequest => winback_proto::offers::ListFraudSignalsResponse,
    winback_proto::profiles::ListCustomersRequest => winback_proto::profiles::ListCustomersResponse,
    winback_proto::profiles::ListConsentHistoryRequest => winback_proto::profiles::ListConsentHistoryResponse,
    winback_proto::segmentation::ListTransitionsRequest => winback_proto::segmentation::ListTransitionsResponse,
}

static KEY: OnceLock<aws_lc_rs::hmac::Key> = OnceLock::new();

/// Sets the key page tokens are signed with (the first call wins; every service of a
/// process shares it).
pub fn use_key(key: &[u8; 32]) {
    let _ = KEY.set(aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key));
}

fn key() -> &'static aws_lc_rs::hmac::Key {
    KEY.get_or_init(|| {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        aws_lc_rs::hmac::Key::generate(aws_lc_rs::hmac::HMAC_SHA256, &rng)
            .unwrap_or_else(|_| aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &[0; 32]))
    })
}

/// What a token is bound to.
struct Binding {
    scope: Vec<u8>,
}

impl Binding {
    fn new<R: PagedRequest>(tenant: &str, request: &mut R) -> Self {
        let page = request.page_mut().take();
        let filters = request.encode_to_vec();
        *request.page_mut() = page;
        let mut scope = Vec::with_capacity(tenant.len() + filters.len() + 64);
        for part in [
            tenant.as_bytes(),
            std::any::type_name::<R>().as_bytes(),
            &filters,
        ] {
            scope.extend_from_slice(&(part.len() as u64).to_be_bytes());
            scope.extend_from_slice(part);
        }
        Self { scope }
    }

    fn tag(&self, cursor: &[u8]) -> aws_lc_rs::hmac::Tag {
        let mut context = aws_lc_rs::hmac::Context::with_key(key());
        context.update(&self.scope);
        context.update(cursor);
        context.sign()
    }

    fn seal(&self, cursor: &str) -> String {
        if cursor.is_empty() {
            return String::new();
        }
        let tag = self.tag(cursor.as_bytes());
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(cursor),
            URL_SAFE_NO_PAD.encode(&tag.as_ref()[..16])
        )
    }

    fn open(&self, token: &str) -> Result<String, ServiceError> {
        if token.is_empty() {
            return Ok(String::new());
        }
        let bad = || ServiceError::invalid("page.page_token", "not a token this call gave");
        let (cursor, mac) = token.split_once('.').ok_or_else(bad)?;
        let cursor = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| bad())?;
        let tag = self.tag(&cursor);
        // Constant-time comparison of the truncated tag.
        if mac.len() != 16
            || aws_lc_rs::constant_time::verify_slices_are_equal(&mac, &tag.as_ref()[..16]).is_err()
        {
            return Err(bad());
        }
        String::from_utf8(cursor).map_err(|_| bad())
    }
}

/// Runs a list call with sealed page tokens: the request's token is checked and replaced
/// by the cursor it carries before `list` sees it, and the response's next cursor is
/// sealed. The one way every list call pages.
pub async fn paged<Req, Resp, F, Fut>(
    tenant: &str,
    mut request: Req,
    list: F,
) -> Result<Resp, ServiceError>
where
    Req: PagedRequest,
    Resp: PagedResponse,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Resp, ServiceError>>,
{
    let binding = Binding::new(tenant, &mut request);
    if let Some(page) = request.page_mut().as_mut() {
        page.page_token = binding.open(&page.page_token)?;
    }
    let mut response = list(request).await?;
    if let Some(page) = response.page_mut().as_mut() {
        page.next_page_token = binding.seal(&page.next_page_token);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use winback_proto::campaigns::{ListCampaignsRequest, ListCampaignsResponse};

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

    fn request(state: i32, token: &str) -> ListCampaignsRequest {
        ListCampaignsRequest {
            state,
            page: Some(PageRequest {
                page_size: 10,
                page_token: token.into(),
            }),
        }
    }

    async fn list(tenant: &str, r: ListCampaignsRequest) -> Result<(String, String), ServiceError> {
        let mut seen = String::new();
        let reply = paged(tenant, r, |r: ListCampaignsRequest| {
            seen = r.page.clone().unwrap_or_default().page_token;
            async {
                Ok(ListCampaignsResponse {
                    campaigns: vec![],
                    page: Some(PageResponse {
                        next_page_token: "cmp_0042".into(),
                    }),
                })
            }
        })
        .await?;
        Ok((seen, reply.page.unwrap_or_default().next_page_token))
    }

    #[tokio::test]
    async fn a_token_opens_only_for_its_call_tenant_and_filters() {
        let (seen, next) = list("t-1", request(1, "")).await.unwrap();
        assert_eq!(seen, "");
        assert!(!next.contains("cmp_0042"), "opaque: {next}");
        // The same call, tenant and filters read the cursor back.
        let (seen, _) = list("t-1", request(1, &next)).await.unwrap();
        assert_eq!(seen, "cmp_0042");
        // Another tenant, other filters, an edit, garbage: INVALID_ARGUMENT on the token.
        let edited = format!("{}A", next);
        for (tenant, r) in [
            ("t-2", request(1, &next)),
            ("t-1", request(2, &next)),
            ("t-1", request(1, &edited)),
            ("t-1", request(1, "zzz")),
            ("t-1", request(1, "eyJhbGciOi.x")),
        ] {
            match list(tenant, r).await {
                Err(ServiceError::InvalidArgument(v)) => assert_eq!(v[0].field, "page.page_token"),
                other => panic!("{other:?}"),
            }
        }
    }
}
