//! Scheduled recomputes: tenants whose policy sets `recompute_every` are recomputed once
//! their latest run is that old (by the service clock, checked every few seconds).

use std::time::Duration;

use prost::Message;
use winback_proto::segmentation::Policy;

use crate::context::Segmentation;
use crate::store::queries;

/// How often the schedule is checked.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Runs until the service shuts down.
pub(crate) async fn run(segmentation: Segmentation) {
    let shutdown = segmentation.ctx.shutdown.clone();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
        if let Err(error) = run_due(&segmentation).await {
            tracing::warn!(%error, "scheduled recompute check failed");
        }
    }
}

async fn run_due(segmentation: &Segmentation) -> Result<(), sea_orm::DbErr> {
    let now = segmentation.now();
    for (tenant, bytes) in queries::policies(&segmentation.db).await? {
        let Ok(policy) = Policy::decode(bytes.as_slice()) else {
            continue;
        };
        let Some(every) = policy.recompute_every.filter(|d| d.seconds > 0) else {
            continue;
        };
        let latest = queries::runs(&segmentation.db, &tenant, 1).await?;
        let due = latest.first().is_none_or(|run| {
            now.timestamp_micros() - run.finished_at_us >= every.seconds.saturating_mul(1_000_000)
        });
        if due
            && let Err(error) = segmentation
                .recompute(&tenant, crate::recompute::AsOf::now(now), false)
                .await
        {
            tracing::warn!(tenant, %error, "scheduled recompute failed");
        }
    }
    Ok(())
}
