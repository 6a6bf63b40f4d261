//! Controllers: level-triggered loops that read desired and observed state and converge them.
//! Each lists its keys, then watches from the list's revision; on any watch failure it starts
//! over from a fresh list, so no change is ever missed for good.

pub mod drain;
pub mod liveness;
pub mod migrations;
pub mod scheduling;

use crate::app::App;
use crate::scheduler::Policy;
use tokio::task::JoinHandle;

/// The singleton controllers of a control plane (one replica runs them at a time).
pub struct Controllers {
    tasks: Vec<JoinHandle<()>>,
}

impl Controllers {
    /// Starts every controller.
    pub fn start(app: &App, policy: Policy) -> Self {
        let tasks = vec![
            tokio::spawn(scheduling::run(app.clone(), policy.clone())),
            tokio::spawn(drain::run(app.clone(), policy)),
            tokio::spawn(liveness::run(app.clone())),
            tokio::spawn(migrations::run(app.clone())),
        ];
        Self { tasks }
    }
}

impl Controllers {
    /// Stops every controller and waits until they are gone.
    pub async fn stop(mut self) {
        for t in std::mem::take(&mut self.tasks) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Controllers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Runs the singleton controllers on whichever replica leads: campaigns, runs them while
/// leading, stops them when leadership is lost, and campaigns again. Abort the task to stop;
/// call [`crate::leader::Election::resign`] first for a fast hand-over.
pub fn run_elected(app: App, policy: Policy, election: crate::leader::Election) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let lease = election.campaign().await;
            let controllers = Controllers::start(&app, policy.clone());
            election.hold(lease).await;
            controllers.stop().await;
            tracing::warn!("lost leadership: controllers stopped");
        }
    })
}

/// Back-off before a controller restarts its list-and-watch after a failure.
pub(crate) const RESTART_DELAY: std::time::Duration = std::time::Duration::from_millis(500);
