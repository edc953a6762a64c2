//! A worker's progress report on one of its leases.

use tonic::Status;

use super::WorkLoop;
use crate::{
    dispatch::registry::ReportRefusal, proto::automation_v1 as pb, store::jobs::ProgressWrite,
    wire::work,
};

impl WorkLoop<'_> {
    /// Keeps a progress report as its job's latest, for the coalescing
    /// writer ([`crate::dispatch::progress`]); never waits on the database
    /// and is not acknowledged. A report on a lease the stream does not
    /// hold (another stream's, a stale attempt, a finished job) changes
    /// nothing and is answered with a cancellation of that attempt, as the
    /// worker should stop running it; one sent while the lease's own
    /// completion, failure or release is being settled is ignored (that
    /// report took the progress waiting before it). The report already
    /// spent the stream's inbound budget.
    pub(super) fn on_progress(&mut self, report: pb::JobProgressReport) -> Result<(), Status> {
        let (lease, progress) = work::progress_report(report, self.id())?;
        let checked = self.shared.registry().check_progress(&lease);
        match checked {
            Ok(()) => {
                self.shared.progress.put(ProgressWrite {
                    lease,
                    progress: progress.to_json(),
                });
            }
            Err(ReportRefusal::AlreadyReported) => {}
            Err(refusal) => self.push(work::progress_refused(&lease, refusal.reason(&lease))),
        }
        Ok(())
    }
}
