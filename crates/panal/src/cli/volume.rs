//! `panal volume ...`: create (empty or cloned), clone, list, show, resize, delete, move (to
//! another pool or host), export (as an image), attach, detach, snapshot.

use super::output::{Format, print, print_fields};
use super::{api_err, wait};
use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use panal_client::Client;
use panal_types::image::DiskFormat;
use panal_types::size::{format_size, parse_size};
use panal_types::volume::{
    SnapshotStep, Volume, VolumeAccepted, VolumeCreate, VolumeExport, VolumeFormat, VolumeMove,
    VolumeSource,
};
use std::time::Duration;

/// Volume commands.
#[derive(Subcommand, Debug)]
pub enum VolumeCommand {
    /// Create a volume: empty, or a clone of another (linked copy-on-write, or --full).
    #[command(
        after_help = "Examples:\n  panal volume create data --size 10G\n  panal volume create data-copy --from data --full\n  panal volume create scratch --size 1G --format raw --pool fast --host node-2"
    )]
    Create(CreateArgs),
    /// Clone a volume: a linked copy-on-write child (default) or a full copy (--full).
    #[command(
        after_help = "Examples:\n  panal volume clone base web-1\n  panal volume clone data data-copy --full --pool fast"
    )]
    Clone(CloneArgs),
    /// List volumes.
    List(ProjectArg),
    /// Show a volume.
    Show(Target),
    /// Grow a volume (live when its VM runs).
    Resize(ResizeArgs),
    /// Delete a detached volume.
    Delete(WaitTarget),
    /// Move a detached volume to another pool of its host, or to another host (with progress).
    #[command(
        after_help = "Examples:\n  panal volume move data --pool fast\n  panal volume move data --host node-2\n  panal volume move data --host node-2 --pool fast"
    )]
    Move(MoveArgs),
    /// Export a volume's contents as a disk image of its project (with progress).
    #[command(
        after_help = "Examples:\n  panal volume export data data-image\n  panal volume export root golden --format raw"
    )]
    Export(ExportArgs),
    /// Attach a volume to a VM (hot-plugged when it runs).
    Attach(AttachArgs),
    /// Detach a volume from its VM.
    Detach(WaitTarget),
    /// Take, revert to or delete a snapshot of a volume.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

/// Snapshot commands (of a volume, or with `panal vm snapshot` of all of a VM's volumes).
#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Take a snapshot (a running guest is paused for the instant it takes).
    Create(SnapshotArgs),
    /// Revert to a snapshot (no VM may be running on the disks).
    Revert(SnapshotArgs),
    /// Delete a snapshot.
    Delete(SnapshotArgs),
}

/// Arguments of a snapshot command.
#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// The volume (or VM).
    pub target: String,
    /// The snapshot.
    pub snapshot: String,
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    pub project: Option<String>,
    /// Return at once instead of waiting.
    #[arg(long)]
    pub no_wait: bool,
}

impl SnapshotCommand {
    /// The step and its arguments.
    pub fn parts(&self) -> (SnapshotStep, &SnapshotArgs) {
        match self {
            SnapshotCommand::Create(a) => (SnapshotStep::Create, a),
            SnapshotCommand::Revert(a) => (SnapshotStep::Revert, a),
            SnapshotCommand::Delete(a) => (SnapshotStep::Delete, a),
        }
    }
}

/// Selects a project.
#[derive(Args, Debug)]
pub struct ProjectArg {
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    pub project: Option<String>,
}

/// Names a volume.
#[derive(Args, Debug)]
pub struct Target {
    /// Volume name.
    pub name: String,
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    pub project: Option<String>,
}

/// Names a volume, for a change that may be waited for.
#[derive(Args, Debug)]
pub struct WaitTarget {
    #[command(flatten)]
    target: Target,
    /// Return at once instead of waiting for the change.
    #[arg(long)]
    no_wait: bool,
}

/// Arguments of `volume create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    target: Target,
    /// Virtual size (e.g. 10G); a clone defaults to its parent's.
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// File format: qcow2 (thin, default) or raw.
    #[arg(long, value_parser = parse_format)]
    format: Option<VolumeFormat>,
    /// Storage pool (default `default`).
    #[arg(long)]
    pool: Option<String>,
    /// Host whose pool keeps it (default: the one with most free space).
    #[arg(long)]
    host: Option<String>,
    /// Clone this volume.
    #[arg(long, value_name = "VOLUME")]
    from: Option<String>,
    /// With --from: copy every block instead of a linked copy-on-write child.
    #[arg(long, requires = "from")]
    full: bool,
    /// Return at once instead of waiting for the file.
    #[arg(long)]
    no_wait: bool,
}

/// Arguments of `volume clone`.
#[derive(Args, Debug)]
pub struct CloneArgs {
    /// The volume to clone.
    pub source: String,
    /// The new volume's name.
    pub name: String,
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    pub project: Option<String>,
    /// Copy every block instead of making a linked copy-on-write child.
    #[arg(long)]
    full: bool,
    /// With --full: put the copy in this pool of the source's host (default: the source's).
    #[arg(long, requires = "full")]
    pool: Option<String>,
    /// With --full: file format of the copy (qcow2 or raw; default: the source's).
    #[arg(long, value_parser = parse_format, requires = "full")]
    format: Option<VolumeFormat>,
    /// Virtual size, if larger than the source's.
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Return at once instead of waiting for the file.
    #[arg(long)]
    no_wait: bool,
}

/// Arguments of `volume export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The volume.
    pub volume: String,
    /// The new image's name (in the volume's project).
    pub image: String,
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    pub project: Option<String>,
    /// The image's format: qcow2 (default) or raw.
    #[arg(long, value_parser = parse_disk_format)]
    format: Option<DiskFormat>,
    /// Wait for the export, with progress (the default).
    #[arg(long, conflicts_with = "no_wait")]
    wait: bool,
    /// Return at once.
    #[arg(long)]
    no_wait: bool,
}

/// Arguments of `volume resize`.
#[derive(Args, Debug)]
pub struct ResizeArgs {
    #[command(flatten)]
    target: Target,
    /// New size (only larger), e.g. 20G.
    #[arg(long, value_parser = parse_size)]
    size: u64,
    /// Return at once.
    #[arg(long)]
    no_wait: bool,
}

/// Arguments of `volume move`.
#[derive(Args, Debug)]
pub struct MoveArgs {
    #[command(flatten)]
    target: Target,
    /// The pool to move it to (with --host: default the same pool name there).
    #[arg(long, required_unless_present = "host")]
    pool: Option<String>,
    /// The host to move it to: the file is copied through the control plane and verified,
    /// then the original is removed.
    #[arg(long)]
    host: Option<String>,
    /// Return at once.
    #[arg(long)]
    no_wait: bool,
}

/// Arguments of `volume attach`.
#[derive(Args, Debug)]
pub struct AttachArgs {
    #[command(flatten)]
    target: Target,
    /// The VM (in the volume's project).
    #[arg(long)]
    vm: String,
    /// Return at once.
    #[arg(long)]
    no_wait: bool,
}

fn parse_disk_format(s: &str) -> Result<DiskFormat, String> {
    match s {
        "qcow2" => Ok(DiskFormat::Qcow2),
        "raw" => Ok(DiskFormat::Raw),
        _ => Err(format!("unknown format {s:?} (expected qcow2 or raw)")),
    }
}

fn parse_format(s: &str) -> Result<VolumeFormat, String> {
    match s {
        "qcow2" => Ok(VolumeFormat::Qcow2),
        "raw" => Ok(VolumeFormat::Raw),
        _ => Err(format!("unknown format {s:?} (expected qcow2 or raw)")),
    }
}

/// Runs a volume command.
pub async fn run(client: &Client, format: Format, cmd: &VolumeCommand) -> Result<()> {
    match cmd {
        VolumeCommand::Create(a) => {
            if a.from.is_none() && a.size.is_none() {
                bail!("an empty volume needs --size (or clone one with --from)");
            }
            let req = VolumeCreate {
                name: a.target.name.clone(),
                project: a.target.project.clone(),
                size_bytes: a.size,
                format: a.format,
                pool: a.pool.clone(),
                host: a.host.clone(),
                source: a.from.as_ref().map(|v| VolumeSource::Volume {
                    volume: v.clone(),
                    linked: !a.full,
                }),
            };
            let accepted = client.create_volume(&req).await.map_err(api_err)?;
            finish(client, format, &a.target, accepted, a.no_wait).await
        }
        VolumeCommand::Clone(a) => {
            let req = VolumeCreate {
                name: a.name.clone(),
                project: a.project.clone(),
                size_bytes: a.size,
                format: a.format,
                pool: a.pool.clone(),
                host: None,
                source: Some(VolumeSource::Volume {
                    volume: a.source.clone(),
                    linked: !a.full,
                }),
            };
            let accepted = client.create_volume(&req).await.map_err(api_err)?;
            let t = Target {
                name: a.name.clone(),
                project: a.project.clone(),
            };
            finish(client, format, &t, accepted, a.no_wait).await
        }
        VolumeCommand::Export(a) => {
            let req = VolumeExport {
                image: a.image.clone(),
                format: a.format,
            };
            let accepted = client
                .export_volume(a.project.as_deref(), &a.volume, &req)
                .await
                .map_err(api_err)?;
            if a.no_wait {
                eprintln!(
                    "exporting {} as image {} (operation {})",
                    a.volume, a.image, accepted.operation.id
                );
                return Ok(());
            }
            wait::follow(client, &accepted.operation, Duration::from_secs(3600)).await?;
            let image = client
                .image(a.project.as_deref(), &a.image)
                .await
                .map_err(api_err)?;
            super::image::show(format, &image)
        }
        VolumeCommand::List(p) => {
            let all = panal_client::all_pages(|t| async move {
                client
                    .list_volumes(p.project.as_deref(), t.as_deref())
                    .await
            })
            .await
            .map_err(api_err)?;
            print(format, &all, || {
                let mut rows = vec![
                    [
                        "NAME",
                        "SIZE",
                        "FORMAT",
                        "POOL",
                        "HOST",
                        "PHASE",
                        "ATTACHED TO",
                    ]
                    .map(String::from)
                    .to_vec(),
                ];
                rows.extend(all.iter().map(|v| {
                    vec![
                        v.name.to_string(),
                        format_size(v.size_bytes),
                        v.format.as_str().into(),
                        v.pool.clone(),
                        v.host.to_string(),
                        v.phase.as_str().into(),
                        v.attached_to
                            .as_ref()
                            .map(|n| n.to_string())
                            .unwrap_or_else(|| "-".into()),
                    ]
                }));
                rows
            })
        }
        VolumeCommand::Show(t) => show(
            format,
            &client
                .volume(t.project.as_deref(), &t.name)
                .await
                .map_err(api_err)?,
        ),
        VolumeCommand::Resize(a) => {
            let accepted = client
                .resize_volume(a.target.project.as_deref(), &a.target.name, a.size)
                .await
                .map_err(api_err)?;
            finish(client, format, &a.target, accepted, a.no_wait).await
        }
        VolumeCommand::Delete(w) => {
            let accepted = client
                .delete_volume(w.target.project.as_deref(), &w.target.name)
                .await
                .map_err(api_err)?;
            if !w.no_wait {
                wait::follow(client, &accepted.operation, Duration::from_secs(600)).await?;
            }
            eprintln!("deleted volume {}", w.target.name);
            Ok(())
        }
        VolumeCommand::Move(a) => {
            let req = VolumeMove {
                pool: a.pool.clone(),
                host: a.host.clone(),
            };
            let accepted = client
                .move_volume_to(a.target.project.as_deref(), &a.target.name, &req)
                .await
                .map_err(api_err)?;
            finish(client, format, &a.target, accepted, a.no_wait).await
        }
        VolumeCommand::Attach(a) => {
            let accepted = client
                .attach_volume(a.target.project.as_deref(), &a.target.name, &a.vm)
                .await
                .map_err(api_err)?;
            finish(client, format, &a.target, accepted, a.no_wait).await
        }
        VolumeCommand::Snapshot(cmd) => {
            let (step, a) = cmd.parts();
            let accepted = client
                .volume_snapshot(a.project.as_deref(), &a.target, &a.snapshot, step)
                .await
                .map_err(api_err)?;
            let t = Target {
                name: a.target.clone(),
                project: a.project.clone(),
            };
            finish(client, format, &t, accepted, a.no_wait).await
        }
        VolumeCommand::Detach(w) => {
            let accepted = client
                .detach_volume(w.target.project.as_deref(), &w.target.name)
                .await
                .map_err(api_err)?;
            finish(client, format, &w.target, accepted, w.no_wait).await
        }
    }
}

/// Follows the operation (unless told not to), then shows the volume.
async fn finish(
    client: &Client,
    format: Format,
    t: &Target,
    accepted: VolumeAccepted,
    no_wait: bool,
) -> Result<()> {
    if no_wait {
        eprintln!(
            "{} {} (operation {})",
            accepted.operation.kind.as_str(),
            t.name,
            accepted.operation.id
        );
        return show(format, &accepted.volume);
    }
    wait::follow(client, &accepted.operation, Duration::from_secs(3600)).await?;
    show(
        format,
        &client
            .volume(t.project.as_deref(), &t.name)
            .await
            .map_err(api_err)?,
    )
}

fn show(format: Format, v: &Volume) -> Result<()> {
    print(format, v, Vec::new)?;
    if format == Format::Table {
        let mut f = vec![
            ("Name", v.name.to_string()),
            ("Project", v.project.to_string()),
            ("ID", v.id.to_string()),
            ("Size", format_size(v.size_bytes)),
            ("Format", v.format.as_str().into()),
            (
                "Pool",
                format!(
                    "{}{} on {}",
                    v.pool,
                    if v.shared { " (shared)" } else { "" },
                    v.host
                ),
            ),
            ("Phase", v.phase.as_str().into()),
            (
                "Attached to",
                v.attached_to
                    .as_ref()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
            ),
        ];
        if let Some(p) = &v.parent {
            f.push(("Linked clone of", p.to_string()));
        }
        if !v.children.is_empty() {
            f.push((
                "Linked clones",
                v.children
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        if !v.snapshots.is_empty() {
            f.push((
                "Snapshots",
                v.snapshots
                    .iter()
                    .map(|s| format!("{} ({})", s.name, s.created_at.format("%Y-%m-%d %H:%M:%S")))
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        if let Some(r) = &v.reason {
            f.push(("Reason", r.clone()));
        }
        print_fields(&f);
    }
    Ok(())
}
