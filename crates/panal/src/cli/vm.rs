//! `panal vm ...`: the VM lifecycle from the command line.

use super::output::{Format, print, print_fields};
use super::{api_err, wait};
use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use panal_client::Client;
use panal_types::size::{format_size, parse_size};
use panal_types::vm::{
    GroupPolicy, HypervisorKind, MAX_BATCH_CREATE, MachineProfile, PlacementGroupRequest,
    RestartPolicy, Vm, VmAccepted, VmCreate, VmUpdate,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// VM commands.
#[derive(Subcommand, Debug)]
pub enum VmCommand {
    /// Create a VM (and start it unless --no-start).
    #[command(
        after_help = "Examples:\n  panal vm create web-1 --vcpus 2 --memory 1G --image tiny --wait\n  panal vm create web --count 20 --image tiny   (web-1 .. web-20)\n  panal vm create app --image tiny --nic network=lan,sg=web"
    )]
    Create(Box<CreateArgs>),
    /// List VMs of a project.
    List(ProjectArg),
    /// Show one VM with its status and recent events.
    Show(Target),
    /// Start a VM.
    Start(Change),
    /// Stop a VM (ask the guest, then force after its timeout; --force powers off at once).
    Stop(StopArgs),
    /// Restart a running VM.
    Restart(Change),
    /// Delete a VM (stopping it first).
    Delete(Change),
    /// Change vCPUs or memory (live where the hypervisor can), or a stopped VM's slots.
    Resize(ResizeArgs),
    /// Pause a running VM's vCPUs.
    Pause(Change),
    /// Resume a paused VM.
    Resume(Change),
    /// Attach to the serial console (detach with Ctrl-]).
    Console(Target),
    /// Show the console history.
    Logs(LogsArgs),
    /// Take, revert to or delete a snapshot of all the VM's volumes at one instant.
    #[command(subcommand)]
    Snapshot(super::volume::SnapshotCommand),
    /// Plug or unplug NICs (live on a running q35 VM).
    #[command(subcommand)]
    Nic(super::network::NicCommand),
    /// Move a running VM to another host without stopping it (live migration).
    Migrate(Box<super::vm_migrate::MigrateArgs>),
}

/// Arguments of `vm logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    target: Target,
    /// Keep printing new output.
    #[arg(long, short = 'f')]
    follow: bool,
}

/// Selects a project.
#[derive(Args, Debug)]
pub struct ProjectArg {
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    pub project: Option<String>,
}

/// Names a VM.
#[derive(Args, Debug)]
pub struct Target {
    /// VM name.
    pub name: String,
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    pub project: Option<String>,
}

/// A change that may be waited for.
#[derive(Args, Debug)]
pub struct Change {
    #[command(flatten)]
    target: Target,
    /// Wait until it is done, showing progress.
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    timeout: u64,
}

/// Arguments of `vm stop`.
#[derive(Args, Debug)]
pub struct StopArgs {
    #[command(flatten)]
    change: Change,
    /// Power off at once instead of asking the guest.
    #[arg(long)]
    force: bool,
}

/// Arguments of `vm create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// VM name (lowercase letters, digits, '-'; at most 63).
    pub name: String,
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    pub project: Option<String>,
    /// Hypervisor: qemu or fake.
    #[arg(long, value_parser = parse_hypervisor)]
    pub hypervisor: Option<HypervisorKind>,
    /// Image to boot.
    #[arg(long)]
    pub image: Option<String>,
    /// Boot from this volume instead of an image (its root file system at /dev/vda).
    #[arg(long, value_name = "VOLUME", conflicts_with = "image")]
    pub boot_volume: Option<String>,
    /// A NIC: network=NAME[,ip=ADDR][,mac=MAC][,sg=GROUP+GROUP] (repeatable; eth0, eth1, ...).
    #[arg(long = "nic", value_name = "network=NAME,...", value_parser = super::network::parse_nic)]
    pub nics: Vec<panal_types::network::NicRequest>,
    /// Slots for volumes and NICs (default: its devices plus two, at least four; at most 16),
    /// changed later only while the VM is stopped (`vm resize --hotplug-slots`). Each empty
    /// one adds a little to live-migration downtime.
    #[arg(long, value_name = "N")]
    pub hotplug_slots: Option<u32>,
    /// Virtual CPUs.
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Memory, e.g. 512M, 1G (a bare number means MiB).
    #[arg(long, value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Machine profile: q35 or microvm.
    #[arg(long, value_parser = parse_machine)]
    pub machine: Option<MachineProfile>,
    /// Label KEY=VALUE (repeatable).
    #[arg(long = "label", short = 'l', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Restart policy: always, on-failure or never.
    #[arg(long, value_parser = parse_restart)]
    pub restart_policy: Option<RestartPolicy>,
    /// Only hosts with this label KEY=VALUE (repeatable).
    #[arg(long = "selector", value_parser = parse_label)]
    pub selectors: Vec<(String, String)>,
    /// Only hosts of this zone.
    #[arg(long)]
    pub zone: Option<String>,
    /// Hypervisor capability the host must have (repeatable).
    #[arg(long = "capability")]
    pub capabilities: Vec<String>,
    /// Placement group NAME:POLICY[:soft], POLICY affinity or anti-affinity
    /// (e.g. web:anti-affinity, cache:affinity:soft).
    #[arg(long, value_parser = parse_group)]
    pub group: Option<PlacementGroupRequest>,
    /// Create N VMs named NAME-1 .. NAME-N at once (all or none, up to 1000 per request).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub count: Option<u32>,
    /// Create without starting.
    #[arg(long)]
    pub no_start: bool,
    /// Wait until it runs (or is created, with --no-start), showing progress.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    pub timeout: u64,
}

/// Arguments of `vm resize`.
#[derive(Args, Debug)]
pub struct ResizeArgs {
    #[command(flatten)]
    target: Target,
    /// New vCPU count.
    #[arg(long)]
    vcpus: Option<u32>,
    /// New memory size, e.g. 1G.
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// New number of slots for volumes and NICs (only while the VM is stopped; at most 16).
    #[arg(long, value_name = "N")]
    hotplug_slots: Option<u32>,
}

fn parse_hypervisor(s: &str) -> Result<HypervisorKind, String> {
    s.parse()
}

fn parse_machine(s: &str) -> Result<MachineProfile, String> {
    match s {
        "q35" => Ok(MachineProfile::Q35),
        "microvm" => Ok(MachineProfile::Microvm),
        _ => Err(format!(
            "unknown machine profile {s:?} (expected q35 or microvm)"
        )),
    }
}

fn parse_restart(s: &str) -> Result<RestartPolicy, String> {
    match s {
        "always" => Ok(RestartPolicy::Always),
        "on-failure" | "on_failure" => Ok(RestartPolicy::OnFailure),
        "never" => Ok(RestartPolicy::Never),
        _ => Err(format!(
            "unknown restart policy {s:?} (expected always, on-failure or never)"
        )),
    }
}

fn parse_group(s: &str) -> Result<PlacementGroupRequest, String> {
    let mut parts = s.split(':');
    let name = parts.next().unwrap_or_default().to_owned();
    let policy = match parts.next() {
        Some("affinity") => GroupPolicy::Affinity,
        Some("anti-affinity") | Some("anti_affinity") => GroupPolicy::AntiAffinity,
        _ => return Err(format!("{s:?} is not NAME:affinity|anti-affinity[:soft]")),
    };
    let soft = match parts.next() {
        None => false,
        Some("soft") => true,
        Some("hard") => false,
        Some(x) => return Err(format!("unknown group strength {x:?} (soft or hard)")),
    };
    Ok(PlacementGroupRequest { name, policy, soft })
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// Runs a VM command.
pub async fn run(client: &Client, format: Format, cmd: &VmCommand) -> Result<()> {
    match cmd {
        VmCommand::Create(a) => {
            let req = VmCreate {
                name: a.name.clone(),
                project: a.project.clone(),
                vcpus: a.vcpus,
                memory_bytes: a.memory,
                image: a.image.clone(),
                boot_volume: a.boot_volume.clone(),
                nics: a.nics.clone(),
                hotplug_slots: a.hotplug_slots,
                hypervisor: a.hypervisor,
                machine: a.machine,
                labels: a.labels.iter().cloned().collect::<BTreeMap<_, _>>(),
                restart_policy: a.restart_policy,
                start: Some(!a.no_start),
                stop_timeout_secs: None,
                host_selector: a.selectors.iter().cloned().collect(),
                zone: a.zone.clone(),
                capabilities: a.capabilities.clone(),
                placement_group: a.group.clone(),
            };
            if let Some(n) = a.count {
                return create_many(client, format, a, req, n).await;
            }
            let accepted = client.create_vm(&req).await.map_err(api_err)?;
            finish(
                client,
                format,
                accepted,
                a.wait,
                a.timeout,
                a.project.as_deref(),
            )
            .await
        }
        VmCommand::List(p) => {
            let vms = client
                .all_vms(p.project.as_deref())
                .await
                .map_err(api_err)?;
            print(format, &vms, || {
                let mut rows = vec![
                    [
                        "NAME",
                        "PHASE",
                        "HOST",
                        "VCPUS",
                        "MEMORY",
                        "HYPERVISOR",
                        "IMAGE",
                    ]
                    .map(String::from)
                    .to_vec(),
                ];
                rows.extend(vms.iter().map(|v| {
                    vec![
                        v.name.to_string(),
                        v.status.phase.as_str().to_owned(),
                        v.status
                            .host
                            .as_ref()
                            .map(|h| h.to_string())
                            .unwrap_or_else(|| "-".into()),
                        v.spec.vcpus.to_string(),
                        format_size(v.spec.memory_bytes),
                        v.spec.hypervisor.as_str().to_owned(),
                        v.spec
                            .image
                            .as_ref()
                            .map(|i| i.to_string())
                            .unwrap_or_else(|| "-".into()),
                    ]
                }));
                rows
            })
        }
        VmCommand::Show(t) => {
            let vm = client
                .vm(t.project.as_deref(), &t.name)
                .await
                .map_err(api_err)?;
            show(format, &vm)
        }
        VmCommand::Start(c) => {
            let a = client
                .start_vm(c.target.project.as_deref(), &c.target.name)
                .await
                .map_err(api_err)?;
            finish(
                client,
                format,
                a,
                c.wait,
                c.timeout,
                c.target.project.as_deref(),
            )
            .await
        }
        VmCommand::Stop(s) => {
            let c = &s.change;
            let a = client
                .stop_vm(c.target.project.as_deref(), &c.target.name, s.force)
                .await
                .map_err(api_err)?;
            finish(
                client,
                format,
                a,
                c.wait,
                c.timeout,
                c.target.project.as_deref(),
            )
            .await
        }
        VmCommand::Restart(c) => {
            let a = client
                .restart_vm(c.target.project.as_deref(), &c.target.name)
                .await
                .map_err(api_err)?;
            finish(
                client,
                format,
                a,
                c.wait,
                c.timeout,
                c.target.project.as_deref(),
            )
            .await
        }
        VmCommand::Delete(c) => {
            let a = client
                .delete_vm(c.target.project.as_deref(), &c.target.name)
                .await
                .map_err(api_err)?;
            if c.wait {
                wait::follow(client, &a.operation, Duration::from_secs(c.timeout)).await?;
                eprintln!("deleted VM {}", a.vm.name);
                Ok(())
            } else {
                eprintln!("deleting VM {} (operation {})", a.vm.name, a.operation.id);
                Ok(())
            }
        }
        VmCommand::Pause(c) => {
            let a = client
                .pause_vm(c.target.project.as_deref(), &c.target.name)
                .await
                .map_err(api_err)?;
            finish(
                client,
                format,
                a,
                c.wait,
                c.timeout,
                c.target.project.as_deref(),
            )
            .await
        }
        VmCommand::Resume(c) => {
            let a = client
                .resume_vm(c.target.project.as_deref(), &c.target.name)
                .await
                .map_err(api_err)?;
            finish(
                client,
                format,
                a,
                c.wait,
                c.timeout,
                c.target.project.as_deref(),
            )
            .await
        }
        VmCommand::Console(t) => {
            super::console::attach(client, t.project.as_deref(), &t.name).await
        }
        VmCommand::Snapshot(cmd) => {
            let (step, a) = cmd.parts();
            let op = client
                .vm_snapshot(a.project.as_deref(), &a.target, &a.snapshot, step)
                .await
                .map_err(api_err)?;
            if a.no_wait {
                eprintln!("{} {} (operation {})", op.kind.as_str(), a.target, op.id);
                return Ok(());
            }
            let done =
                super::wait::follow(client, &op, std::time::Duration::from_secs(600)).await?;
            eprintln!("{}: {}", op.kind.as_str(), done.progress.message);
            Ok(())
        }
        VmCommand::Nic(cmd) => super::network::run_nic(client, cmd).await,
        VmCommand::Migrate(m) => super::vm_migrate::run(client, format, m).await,
        VmCommand::Logs(l) => {
            super::console::logs(
                client,
                l.target.project.as_deref(),
                &l.target.name,
                l.follow,
            )
            .await
        }
        VmCommand::Resize(r) => {
            if r.vcpus.is_none() && r.memory.is_none() && r.hotplug_slots.is_none() {
                return Err(anyhow!(
                    "nothing to change: give --vcpus, --memory and/or --hotplug-slots"
                ));
            }
            let req = VmUpdate {
                vcpus: r.vcpus,
                memory_bytes: r.memory,
                hotplug_slots: r.hotplug_slots,
                ..VmUpdate::default()
            };
            let vm = client
                .update_vm(r.target.project.as_deref(), &r.target.name, &req)
                .await
                .map_err(api_err)?;
            show(format, &vm)
        }
    }
}

/// `vm create NAME --count N`: VMs NAME-1 .. NAME-N through the batch endpoint, at most
/// [`MAX_BATCH_CREATE`] per request (each request is all or none).
async fn create_many(
    client: &Client,
    format: Format,
    a: &CreateArgs,
    req: VmCreate,
    n: u32,
) -> Result<()> {
    let reqs: Vec<VmCreate> = (1..=n)
        .map(|i| VmCreate {
            name: format!("{}-{i}", a.name),
            ..req.clone()
        })
        .collect();
    let mut items = Vec::with_capacity(reqs.len());
    for part in reqs.chunks(MAX_BATCH_CREATE) {
        let accepted = client.create_vms(part).await.map_err(|e| {
            anyhow!(
                "{} (created {} of {n} before this request)",
                api_err(e),
                items.len()
            )
        })?;
        items.extend(accepted.vms);
    }
    if a.wait {
        for it in &items {
            let op = client
                .operation(&it.operation.to_string())
                .await
                .map_err(api_err)?;
            wait::follow(client, &op, Duration::from_secs(a.timeout)).await?;
        }
    }
    print(format, &items, || {
        let mut rows = vec![
            ["NAME", "PROJECT", "ID", "OPERATION"]
                .map(String::from)
                .to_vec(),
        ];
        rows.extend(items.iter().map(|v| {
            vec![
                v.name.to_string(),
                v.project.to_string(),
                v.id.to_string(),
                v.operation.to_string(),
            ]
        }));
        rows
    })
}

async fn finish(
    client: &Client,
    format: Format,
    a: VmAccepted,
    wait: bool,
    timeout: u64,
    project: Option<&str>,
) -> Result<()> {
    if !wait {
        eprintln!(
            "{} {}: operation {}",
            a.operation.kind.as_str(),
            a.vm.name,
            a.operation.id
        );
        return show(format, &a.vm);
    }
    wait::follow(client, &a.operation, Duration::from_secs(timeout)).await?;
    let vm = client
        .vm(project, a.vm.name.as_str())
        .await
        .map_err(api_err)?;
    show(format, &vm)
}

fn show(format: Format, vm: &Vm) -> Result<()> {
    print(format, vm, Vec::new)?;
    if format == super::Format::Table {
        let mut fields = vec![
            ("Name", vm.name.to_string()),
            ("Project", vm.project.to_string()),
            ("ID", vm.id.to_string()),
            ("Phase", vm.status.phase.as_str().to_owned()),
            (
                "Host",
                vm.status
                    .host
                    .as_ref()
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| "-".into()),
            ),
            ("vCPUs", vm.spec.vcpus.to_string()),
            ("Memory", format_size(vm.spec.memory_bytes)),
            ("Hypervisor", vm.spec.hypervisor.as_str().to_owned()),
            (
                "Image",
                vm.spec
                    .image
                    .as_ref()
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "-".into()),
            ),
            (
                "Desired",
                format!("{:?}", vm.spec.power_state).to_lowercase(),
            ),
            (
                "Generation",
                format!(
                    "{} (observed {})",
                    vm.generation, vm.status.observed_generation
                ),
            ),
        ];
        if let Some(r) = &vm.status.reason {
            fields.push(("Reason", r.clone()));
        }
        if let Some(p) = &vm.status.placement {
            fields.push(("Placement", p.clone()));
        }
        if let Some(op) = &vm.status.operation {
            fields.push(("Operation", op.to_string()));
        }
        if !vm.spec.volumes.is_empty() {
            // In the order the guest sees them after its boot disk.
            let disks: Vec<String> = vm
                .spec
                .volumes
                .iter()
                .map(|d| format!("{} ({})", d.volume, format_size(d.size_bytes)))
                .collect();
            fields.push(("Volumes", disks.join(", ")));
        }
        if !vm.spec.nics.is_empty() {
            // eth0, eth1, ... in this order.
            let nics: Vec<String> = vm
                .spec
                .nics
                .iter()
                .map(|n| {
                    let v6 = n.ipv6.map(|a| format!(" {a}")).unwrap_or_default();
                    format!("{} {}{v6} {} on {}", n.id, n.ip, n.mac, n.network)
                })
                .collect();
            fields.push(("NICs", nics.join(", ")));
        }
        print_fields(&fields);
        if !vm.status.events.is_empty() {
            println!("Events:");
            for e in &vm.status.events {
                println!(
                    "  {}  {:<16} {}",
                    e.at.format("%H:%M:%S"),
                    e.reason,
                    e.message
                );
            }
        }
    }
    Ok(())
}
