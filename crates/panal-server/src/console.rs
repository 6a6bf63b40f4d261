//! Where a VM's serial console is reachable from the control plane. In `panal up` the agent is
//! in the same machine and the console is a Unix socket in the VM's run directory; remote agents
//! will serve it over their own HTTPS endpoint behind the same trait.

use async_trait::async_trait;
use panal_types::vm::Vm;
use std::path::PathBuf;

/// Finds a VM's console.
#[async_trait]
pub trait ConsoleAccess: Send + Sync + 'static {
    /// The Unix socket carrying the interactive console, if the VM runs here.
    async fn socket(&self, vm: &Vm) -> Option<PathBuf>;
    /// The console history file, if there is one.
    async fn log(&self, vm: &Vm) -> Option<PathBuf>;
}
