//! `panal image ...`: import, list, show, delete.

use super::output::{Format, print, print_fields};
use super::{api_err, wait};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use panal_client::Client;
use panal_types::image::{DiskFormat, Image, ImageImport};
use panal_types::size::format_size;
use std::path::PathBuf;
use std::time::Duration;

/// Image commands.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import a kernel (+ initramfs) or a disk image from files on the control plane's machine
    /// or from http/https URLs the control plane downloads.
    #[command(
        after_help = "Examples:\n  panal image import tiny --kernel vmlinux --initrd initramfs.cpio.gz\n  panal image import debian --disk debian.qcow2 --format qcow2\n  panal image import debian --disk-url https://example.org/debian.qcow2 --format qcow2 --disk-sha256 HEX\n\nURLs whose host is (or resolves to) a loopback, link-local, private or control-plane address\nare refused unless the server was started with --image-fetch-allow CIDR."
    )]
    Import(Box<ImportArgs>),
    /// List images.
    List(ProjectArg),
    /// Show an image.
    Show(Target),
    /// Delete an image no VM uses.
    Delete(Target),
}

/// Selects a project.
#[derive(Args, Debug)]
pub struct ProjectArg {
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    pub project: Option<String>,
}

/// Names an image.
#[derive(Args, Debug)]
pub struct Target {
    /// Image name.
    pub name: String,
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    pub project: Option<String>,
}

/// Arguments of `image import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Image name.
    pub name: String,
    /// Project (default `default`).
    #[arg(long, short = 'p')]
    pub project: Option<String>,
    /// Kernel file.
    #[arg(long, conflicts_with_all = ["disk", "disk_url", "kernel_url"])]
    pub kernel: Option<PathBuf>,
    /// Kernel URL (http or https), downloaded by the control plane.
    #[arg(long, value_name = "URL", conflicts_with_all = ["disk", "disk_url"])]
    pub kernel_url: Option<String>,
    /// Expected SHA-256 of the kernel (hex).
    #[arg(long, value_name = "HEX")]
    pub kernel_sha256: Option<String>,
    /// Initramfs file (with a kernel).
    #[arg(long, conflicts_with = "initrd_url")]
    pub initrd: Option<PathBuf>,
    /// Initramfs URL (with a kernel).
    #[arg(long, value_name = "URL")]
    pub initrd_url: Option<String>,
    /// Expected SHA-256 of the initramfs (hex).
    #[arg(long, value_name = "HEX")]
    pub initrd_sha256: Option<String>,
    /// Kernel arguments for this image.
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Disk image file.
    #[arg(long, requires = "format", conflicts_with = "disk_url")]
    pub disk: Option<PathBuf>,
    /// Disk image URL (http or https), downloaded by the control plane.
    #[arg(long, value_name = "URL", requires = "format")]
    pub disk_url: Option<String>,
    /// Expected SHA-256 of the disk image file (hex).
    #[arg(long, value_name = "HEX")]
    pub disk_sha256: Option<String>,
    /// Declared disk format: qcow2 or raw.
    #[arg(long, value_parser = parse_format)]
    pub format: Option<DiskFormat>,
    /// Return at once instead of showing progress.
    #[arg(long)]
    pub no_wait: bool,
}

fn parse_format(s: &str) -> Result<DiskFormat, String> {
    match s {
        "qcow2" => Ok(DiskFormat::Qcow2),
        "raw" => Ok(DiskFormat::Raw),
        _ => Err(format!("unknown format {s:?} (expected qcow2 or raw)")),
    }
}

fn absolute(p: &Option<PathBuf>) -> Result<Option<String>> {
    match p {
        None => Ok(None),
        Some(p) => {
            let abs =
                std::path::absolute(p).with_context(|| format!("bad path {}", p.display()))?;
            Ok(Some(abs.to_string_lossy().into_owned()))
        }
    }
}

/// Runs an image command.
pub async fn run(client: &Client, format: Format, cmd: &ImageCommand) -> Result<()> {
    match cmd {
        ImageCommand::Import(a) => {
            let req = ImageImport {
                name: a.name.clone(),
                project: a.project.clone(),
                kernel_path: absolute(&a.kernel)?,
                kernel_url: a.kernel_url.clone(),
                kernel_sha256: a.kernel_sha256.clone(),
                initrd_path: absolute(&a.initrd)?,
                initrd_url: a.initrd_url.clone(),
                initrd_sha256: a.initrd_sha256.clone(),
                cmdline: a.cmdline.clone(),
                disk_path: absolute(&a.disk)?,
                disk_url: a.disk_url.clone(),
                disk_sha256: a.disk_sha256.clone(),
                format: a.format,
            };
            let accepted = client.import_image(&req).await.map_err(api_err)?;
            if a.no_wait {
                eprintln!("importing {} (operation {})", a.name, accepted.operation.id);
                return Ok(());
            }
            wait::follow(client, &accepted.operation, Duration::from_secs(3600)).await?;
            show(
                format,
                &client
                    .image(a.project.as_deref(), &a.name)
                    .await
                    .map_err(api_err)?,
            )
        }
        ImageCommand::List(p) => {
            let all = panal_client::all_pages(|t| async move {
                client.list_images(p.project.as_deref(), t.as_deref()).await
            })
            .await
            .map_err(api_err)?;
            print(format, &all, || {
                let mut rows = vec![
                    ["NAME", "KIND", "FORMAT", "SIZE", "SHA256"]
                        .map(String::from)
                        .to_vec(),
                ];
                rows.extend(all.iter().map(|i| {
                    vec![
                        i.name.to_string(),
                        serde_json::to_value(i.kind)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        i.format
                            .map(|f| f.as_str().to_owned())
                            .unwrap_or_else(|| "-".into()),
                        format_size(i.size_bytes),
                        i.sha256.chars().take(12).collect(),
                    ]
                }));
                rows
            })
        }
        ImageCommand::Show(t) => show(
            format,
            &client
                .image(t.project.as_deref(), &t.name)
                .await
                .map_err(api_err)?,
        ),
        ImageCommand::Delete(t) => {
            client
                .delete_image(t.project.as_deref(), &t.name)
                .await
                .map_err(api_err)?;
            eprintln!("deleted image {}", t.name);
            Ok(())
        }
    }
}

pub(super) fn show(format: Format, i: &Image) -> Result<()> {
    print(format, i, Vec::new)?;
    if format == Format::Table {
        let mut f = vec![
            ("Name", i.name.to_string()),
            ("Project", i.project.to_string()),
            ("ID", i.id.to_string()),
            (
                "Kind",
                serde_json::to_value(i.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            ),
            ("Size", format_size(i.size_bytes)),
            ("SHA-256", i.sha256.clone()),
            ("Created", i.created_at.to_rfc3339()),
        ];
        if let Some(fm) = i.format {
            f.push(("Format", fm.as_str().to_owned()));
        }
        if let Some(v) = i.virtual_size_bytes {
            f.push(("Virtual size", format_size(v)));
        }
        print_fields(&f);
    }
    Ok(())
}
