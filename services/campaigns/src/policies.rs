//! The tenant's contact policy: stored as its API message, defaults until changed.

use prost::Message;
use winback_platform::ServiceError;
use winback_proto::campaigns::ContactPolicy;

use crate::context::{Campaigns, db_error};
use crate::domain::policy::Policy;
use crate::store::{execute, query};

impl Campaigns {
    /// The policy in force for `tenant`.
    pub(crate) async fn policy(&self, tenant: &str) -> Result<Policy, ServiceError> {
        let rows = query(
            &self.db,
            "SELECT policy FROM policies WHERE tenant_id = $1",
            vec![tenant.into()],
        )
        .await
        .map_err(db_error)?;
        let Some(row) = rows.first() else {
            return Ok(Policy::default());
        };
        let bytes: Vec<u8> = row.try_get("", "policy").map_err(db_error)?;
        let stored = ContactPolicy::decode(bytes.as_slice()).map_err(ServiceError::internal)?;
        Policy::from_proto(&stored, "policy").map_err(ServiceError::InvalidArgument)
    }

    /// Replaces `tenant`'s policy; every bad field is named and nothing is stored.
    pub(crate) async fn update_policy(
        &self,
        tenant: &str,
        policy: Option<ContactPolicy>,
    ) -> Result<ContactPolicy, ServiceError> {
        let policy = policy.ok_or_else(|| ServiceError::invalid("policy", "required"))?;
        let checked =
            Policy::from_proto(&policy, "policy").map_err(ServiceError::InvalidArgument)?;
        let stored = checked.to_proto();
        let (_guard, txn) = self.begin_write().await.map_err(db_error)?;
        execute(
            &txn,
            "INSERT INTO policies (tenant_id, policy) VALUES ($1, $2)
             ON CONFLICT (tenant_id) DO UPDATE SET policy = excluded.policy",
            vec![tenant.into(), stored.encode_to_vec().into()],
        )
        .await
        .map_err(db_error)?;
        txn.commit().await.map_err(db_error)?;
        Ok(stored)
    }
}
