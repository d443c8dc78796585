//! Network preparation ahead of the cut-over (issue 12 item 5): when a wave is released, the
//! rollout controller also sends, for every site of the next wave, a message marked `ahead`
//! that plans the site and creates its plan's new subnet through the one `prepare-subnet`
//! step (in the VNet's session, so subnet writes stay serialised per VNet), then ends. The
//! next wave's own `prepare-subnet` then finds the subnet ready and writes nothing, so its
//! steps, and its apps' downtime, wait for no subnet write.
//!
//! It only ever creates empty delegated subnets: an existing subnet is left to the wave's own
//! steps, and nothing else of the target is read for or written. It stops once the rollout is
//! aborted or the target has an outcome; a dry run sends none.

use super::context::{StepContext, StepError};
use crate::pipeline::message::StepMessage;
use crate::pipeline::rollout::Control;

/// Why preparing ahead for `msg` is no longer wanted, if it is not.
pub(super) async fn unwanted(
    ctx: &StepContext,
    msg: &StepMessage,
) -> Result<Option<&'static str>, StepError> {
    if ctx.ledger.control(&msg.run).await? == Control::Aborted {
        return Ok(Some("the rollout was aborted: nothing prepared ahead"));
    }
    let decided = ctx
        .ledger
        .target(&msg.run, &msg.target)
        .await?
        .is_some_and(|t| t.outcome.is_some());
    Ok(decided.then_some("the target has its outcome: nothing prepared ahead"))
}
