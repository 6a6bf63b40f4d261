//! Image use cases: import (an operation that copies or downloads and hashes the files with
//! progress, verifies declared checksums and inspects disk images), list, show, delete (refused
//! while a VM boots from it).

use super::{App, next_token, page_bounds};
use crate::codec::encode;
use crate::images::guard::{self, Target};
use crate::images::{ImageStore, check_disk, check_source, copy_hashed, fetch, inspect};
use crate::keys;
use panal_store::{Op, Txn};
use panal_types::error::check_name;
use panal_types::image::{Image, ImageAccepted, ImageImport, ImageKind};
use panal_types::operation::{Operation, OperationKind, OperationState, OperationTarget, Progress};
use panal_types::page::Page;
use panal_types::vm::Vm;
use panal_types::{ApiError, DEFAULT_PROJECT, ErrorCode, ImageId, OperationId};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

impl App {
    fn image_store(&self) -> Result<&Arc<ImageStore>, ApiError> {
        self.images
            .as_ref()
            .ok_or_else(|| ApiError::unavailable("this control plane has no image store"))
    }

    /// Starts importing an image; answers with the operation at once. Everything that can be
    /// judged before copying (names, sources, URL destinations, local disk headers) is judged
    /// here, so a refused request changes nothing.
    pub async fn import_image(&self, req: ImageImport) -> Result<ImageAccepted, ApiError> {
        let store = self.image_store()?.clone();
        let name = check_name("name", &req.name)?;
        let project = req
            .project
            .clone()
            .unwrap_or_else(|| DEFAULT_PROJECT.into());
        let project = self.project(&project, "project").await?.value;
        if project.deleting {
            return Err(ApiError::conflict(format!(
                "project \"{}\" is being deleted",
                project.name
            ))
            .with_field("project"));
        }
        let project = project.name;
        if self
            .repo
            .get::<Image>(&keys::image(project.as_str(), name.as_str()))
            .await?
            .is_some()
        {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("an image named \"{name}\" already exists"),
            )
            .with_field("name"));
        }
        let boot_cap = store.max_boot_file.min(store.fetch.max_bytes);
        let kernel = part(
            &store,
            "kernel",
            &req.kernel_path,
            &req.kernel_url,
            &req.kernel_sha256,
            boot_cap,
        )
        .await?;
        let initrd = part(
            &store,
            "initrd",
            &req.initrd_path,
            &req.initrd_url,
            &req.initrd_sha256,
            boot_cap,
        )
        .await?;
        let disk = part(
            &store,
            "disk",
            &req.disk_path,
            &req.disk_url,
            &req.disk_sha256,
            store.fetch.max_bytes,
        )
        .await?;
        let mut parts = Vec::new();
        let (kind, format, virtual_size) = match (kernel, disk) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(ApiError::invalid(
                    "kernel_path",
                    "give either a kernel (kernel_path or kernel_url, and an optional initrd) or a disk (disk_path or disk_url)",
                ));
            }
            (Some(k), None) => {
                if req.format.is_some() {
                    return Err(ApiError::invalid(
                        "format",
                        "format applies to disk images only",
                    ));
                }
                for p in [&k].into_iter().chain(initrd.as_ref()) {
                    if let Source::File(path) = &p.source {
                        check_boot_file_size(p.field, path, store.max_boot_file)?;
                    }
                }
                parts.push(k);
                parts.extend(initrd);
                (ImageKind::KernelInitrd, None, None)
            }
            (None, Some(d)) => {
                let format = req.format.ok_or_else(|| {
                    ApiError::invalid(
                        "format",
                        "disk images need a declared format (qcow2 or raw)",
                    )
                })?;
                if let Some(i) = initrd {
                    return Err(ApiError::invalid(
                        i.field,
                        format!("{} goes with a kernel", i.field),
                    ));
                }
                // A local file is judged now; a download once it is here.
                let virtual_size = match &d.source {
                    Source::File(path) => {
                        let info = inspect(&store.qemu_img, path, d.field).await?;
                        check_disk(&info, format, store.max_virtual_size, d.field)?;
                        Some(info.virtual_size)
                    }
                    Source::Url(_) => None,
                };
                parts.push(d);
                (ImageKind::Disk, Some(format), virtual_size)
            }
        };
        if let Some(c) = &req.cmdline
            && (c.len() > 1024 || c.chars().any(char::is_control))
        {
            return Err(ApiError::invalid(
                "cmdline",
                "at most 1024 printable characters",
            ));
        }
        let now = chrono::Utc::now();
        let downloading = parts.iter().any(|p| matches!(p.source, Source::Url(_)));
        let op = Operation {
            id: OperationId::new(),
            kind: OperationKind::ImageImport,
            target: OperationTarget {
                kind: "image".into(),
                project: project.clone(),
                name: name.clone(),
            },
            state: OperationState::Running,
            progress: Progress {
                percent: Some(0),
                message: if downloading {
                    "downloading"
                } else {
                    "copying"
                }
                .into(),
            },
            error: None,
            created_at: now,
            updated_at: now,
            target_generation: 0,
            migration: None,
        };
        self.repo
            .txn(Txn::new().and_then(Op::put(&keys::op(&op.id), encode(&op))))
            .await?;
        let image = Image {
            id: ImageId::new(),
            name,
            project,
            kind,
            format,
            size_bytes: 0,
            virtual_size_bytes: virtual_size,
            sha256: String::new(),
            cmdline: req.cmdline.clone(),
            created_at: now,
        };
        let app = self.clone();
        let op_for_task = op.clone();
        tokio::spawn(async move {
            let (progress, reporter) = app.progress_reporter(&op_for_task);
            let result = app.copy_image(&store, image, parts, &progress).await;
            drop(progress);
            let _ = reporter.await;
            let mut done = op_for_task;
            done.updated_at = chrono::Utc::now();
            match result {
                Ok(()) => {
                    done.state = OperationState::Succeeded;
                    done.progress = Progress {
                        percent: Some(100),
                        message: "imported".into(),
                    };
                }
                Err(e) => {
                    done.state = OperationState::Failed;
                    done.progress = Progress {
                        percent: Some(100),
                        message: e.message.clone(),
                    };
                    done.error = Some(e);
                }
            }
            let _ = app
                .repo
                .txn(Txn::new().and_then(Op::put(&keys::op(&done.id), encode(&done))))
                .await;
        });
        Ok(ImageAccepted { operation: op })
    }

    /// A task that writes the latest progress into the operation, at most five times a
    /// second; it ends (after its last write) when the sender is dropped.
    fn progress_reporter(
        &self,
        op: &Operation,
    ) -> (watch::Sender<Progress>, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = watch::channel(op.progress.clone());
        let app = self.clone();
        let op = op.clone();
        let task = tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let mut cur = op.clone();
                cur.progress = rx.borrow_and_update().clone();
                cur.updated_at = chrono::Utc::now();
                let _ = app
                    .repo
                    .txn(Txn::new().and_then(Op::put(&keys::op(&op.id), encode(&cur))))
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        (tx, task)
    }

    async fn copy_image(
        &self,
        store: &ImageStore,
        image: Image,
        parts: Vec<Part>,
        progress: &watch::Sender<Progress>,
    ) -> Result<(), ApiError> {
        let dir = store.image_dir(image.id);
        let partial = dir.with_extension("partial");
        let result = self
            .fill_image(store, image, parts, &partial, progress)
            .await;
        if result.is_err() {
            // Nothing of a failed import stays behind.
            let _ = tokio::fs::remove_dir_all(&partial).await;
        }
        result
    }

    async fn fill_image(
        &self,
        store: &ImageStore,
        mut image: Image,
        parts: Vec<Part>,
        partial: &Path,
        progress: &watch::Sender<Progress>,
    ) -> Result<(), ApiError> {
        tokio::fs::create_dir_all(partial)
            .await
            .map_err(|e| io_error("cannot create the image directory", e))?;
        let n = parts.len() as u64;
        let mut sums = Vec::new();
        let mut copied = 0u64;
        for (i, part) in parts.iter().enumerate() {
            let dst = partial.join(part.which);
            let which = part.which;
            let i = i as u64;
            // The percentage of the whole import, parts weighing the same.
            let percent = move |done: u64, total: u64| {
                (((i * total.max(1) + done.min(total)) * 99) / (n * total.max(1))) as u8
            };
            let (bytes, sum) = match &part.source {
                Source::File(src) => {
                    let total = std::fs::metadata(src).map(|m| m.len()).unwrap_or(0);
                    copy_hashed(src, &dst, |done| {
                        progress.send_replace(Progress {
                            percent: Some(percent(done, total)),
                            message: format!("copying {which}"),
                        });
                    })
                    .await
                    .map_err(|e| io_error("copy failed", e))?
                }
                Source::Url(target) => {
                    let mut report = |done: u64, total: Option<u64>| {
                        let message = match total {
                            Some(t) => {
                                format!("{which}: downloaded {} of {}", human(done), human(t))
                            }
                            None => format!("{which}: downloaded {}", human(done)),
                        };
                        progress.send_replace(Progress {
                            percent: Some(percent(done, total.unwrap_or(0))),
                            message,
                        });
                    };
                    let d = fetch::download(
                        &store.fetch,
                        part.field,
                        target.clone(),
                        &dst,
                        part.max_bytes,
                        &mut report,
                    )
                    .await?;
                    (d.bytes, d.sha256)
                }
            };
            if bytes == 0 {
                return Err(ApiError::invalid(
                    part.field,
                    format!("the {which} is empty"),
                ));
            }
            if let Some(want) = &part.sha256
                && *want != sum
            {
                return Err(ApiError::new(
                    ErrorCode::ChecksumMismatch,
                    format!("the {which}'s SHA-256 is {sum}, not the declared {want}"),
                )
                .with_field(part.sha_field));
            }
            if part.which == "disk"
                && let (Source::Url(_), Some(format)) = (&part.source, image.format)
            {
                progress.send_replace(Progress {
                    percent: Some(99),
                    message: "inspecting the disk image".into(),
                });
                let info = inspect(&store.qemu_img, &dst, part.field).await?;
                check_disk(&info, format, store.max_virtual_size, part.field)?;
                image.virtual_size_bytes = Some(info.virtual_size);
            }
            copied += bytes;
            sums.push(sum);
        }
        image.size_bytes = copied;
        image.sha256 = if sums.len() == 1 {
            sums.remove(0)
        } else {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(sums.concat().as_bytes()))
        };
        let dir = store.image_dir(image.id);
        tokio::fs::rename(partial, &dir)
            .await
            .map_err(|e| io_error("cannot place the image", e))?;
        match self
            .repo
            .create(
                &keys::image(image.project.as_str(), image.name.as_str()),
                &image,
            )
            .await?
        {
            Some(_) => Ok(()),
            None => {
                store.remove(image.id).await;
                Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!("an image named \"{}\" appeared meanwhile", image.name),
                ))
            }
        }
    }

    /// Reads an image of a project, falling back to the shared images of `default`.
    pub async fn image(&self, project: Option<&str>, name: &str) -> Result<Image, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        let pname = check_name("project", project)?;
        let iname = check_name("name", name)?;
        for p in [pname.as_str(), DEFAULT_PROJECT] {
            if let Some(i) = self
                .repo
                .get::<Image>(&keys::image(p, iname.as_str()))
                .await?
            {
                return Ok(i.value);
            }
        }
        Err(ApiError::not_found("image", iname))
    }

    /// Lists the images of a project.
    pub async fn list_images(
        &self,
        project: Option<&str>,
        limit: Option<usize>,
        token: Option<&str>,
    ) -> Result<Page<Image>, ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        self.project(project, "project").await?;
        let prefix = keys::images_of(project);
        let (limit, start) = page_bounds(limit, token, &prefix)?;
        let (items, more, _) = self
            .repo
            .list::<Image>(&prefix, start.as_deref(), limit)
            .await?;
        let items: Vec<Image> = items.into_iter().map(|v| v.value).collect();
        let last = items.last().map(|i| i.name.to_string());
        Ok(Page {
            items,
            next_page_token: next_token(more, last),
        })
    }

    /// Deletes an image no VM boots from.
    pub async fn delete_image(&self, project: Option<&str>, name: &str) -> Result<(), ApiError> {
        let project = project.unwrap_or(DEFAULT_PROJECT);
        let pname = check_name("project", project)?;
        let iname = check_name("name", name)?;
        let key = keys::image(pname.as_str(), iname.as_str());
        let image = self
            .repo
            .get::<Image>(&key)
            .await?
            .ok_or_else(|| ApiError::not_found("image", &iname))?;
        let (vms, _, _) = self.repo.list::<Vm>(keys::VMS, None, 0).await?;
        let users: Vec<String> = vms
            .iter()
            .filter(|v| v.value.spec.image.as_ref() == Some(&iname))
            .filter(|v| pname.as_str() == DEFAULT_PROJECT || v.value.project == pname)
            .map(|v| format!("{}/{}", v.value.project, v.value.name))
            .collect();
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "image \"{iname}\" is used by {}",
                users.join(", ")
            )));
        }
        let r = self
            .repo
            .txn(
                Txn::new()
                    .when(panal_store::Compare::unchanged(&key, image.mod_revision))
                    .and_then(Op::delete(&key)),
            )
            .await?;
        if !r.succeeded {
            return Err(ApiError::new(
                ErrorCode::PreconditionFailed,
                "the image changed meanwhile; retry",
            ));
        }
        if let Some(store) = &self.images {
            store.remove(image.value.id).await;
        }
        Ok(())
    }

    /// Where an image's files are on this machine (for the local agent).
    pub fn image_files(&self, image: &Image) -> Result<ImageFiles, String> {
        let store = self.images.as_ref().ok_or("no image store")?;
        match image.kind {
            ImageKind::KernelInitrd => Ok(ImageFiles {
                kernel: Some(store.file(image.id, "kernel")?),
                initrd: store.file(image.id, "initrd").ok(),
                disk: None,
            }),
            ImageKind::Disk => Ok(ImageFiles {
                kernel: None,
                initrd: None,
                disk: Some(store.file(image.id, "disk")?),
            }),
        }
    }
}

/// The files of an image on this machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageFiles {
    /// Kernel.
    pub kernel: Option<PathBuf>,
    /// Initramfs.
    pub initrd: Option<PathBuf>,
    /// Disk.
    pub disk: Option<PathBuf>,
}

/// Where one file of an image comes from.
enum Source {
    /// A file on the control plane's machine.
    File(PathBuf),
    /// A URL whose destination passed the guard.
    Url(Target),
}

/// One file of an image being imported.
struct Part {
    /// `kernel`, `initrd` or `disk`: the file's name in the image directory.
    which: &'static str,
    /// The request field the source came from (`disk_url`, `kernel_path`, ...).
    field: &'static str,
    /// The field of its expected checksum.
    sha_field: &'static str,
    source: Source,
    /// The expected SHA-256, lowercase hex.
    sha256: Option<String>,
    /// The largest download.
    max_bytes: u64,
}

/// The source of one part from its `*_path`, `*_url` and `*_sha256` fields: at most one of path
/// and URL; a URL is resolved and its destination checked now.
async fn part(
    store: &ImageStore,
    which: &'static str,
    path: &Option<String>,
    url: &Option<String>,
    sha256: &Option<String>,
    max_bytes: u64,
) -> Result<Option<Part>, ApiError> {
    let (path_field, url_field, sha_field) = match which {
        "kernel" => ("kernel_path", "kernel_url", "kernel_sha256"),
        "initrd" => ("initrd_path", "initrd_url", "initrd_sha256"),
        _ => ("disk_path", "disk_url", "disk_sha256"),
    };
    let sha256 = match sha256 {
        None => None,
        Some(h) if h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()) => {
            Some(h.to_ascii_lowercase())
        }
        Some(_) => {
            return Err(ApiError::invalid(
                sha_field,
                "a SHA-256 is 64 hexadecimal digits",
            ));
        }
    };
    let (field, source) = match (path, url) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                url_field,
                format!("give {path_field} or {url_field}, not both"),
            ));
        }
        (None, None) => {
            if sha256.is_some() {
                return Err(ApiError::invalid(
                    sha_field,
                    format!("{sha_field} goes with {path_field} or {url_field}"),
                ));
            }
            return Ok(None);
        }
        (Some(p), None) => (path_field, Source::File(check_source(path_field, p)?)),
        (None, Some(u)) => {
            let url = guard::parse_url(url_field, u)?;
            let target = guard::resolve(&store.fetch.urls, url_field, &url).await?;
            (url_field, Source::Url(target))
        }
    };
    Ok(Some(Part {
        which,
        field,
        sha_field,
        source,
        sha256,
        max_bytes,
    }))
}

/// Bytes with one decimal in a binary unit: `12.3 MiB`.
fn human(bytes: u64) -> String {
    let (unit, div) = match bytes {
        b if b >= 1 << 30 => ("GiB", (1u64 << 30) as f64),
        b if b >= 1 << 20 => ("MiB", (1u64 << 20) as f64),
        b if b >= 1 << 10 => ("KiB", 1024.0),
        _ => return format!("{bytes} B"),
    };
    format!("{:.1} {unit}", bytes as f64 / div)
}

fn check_boot_file_size(field: &str, p: &std::path::Path, max: u64) -> Result<(), ApiError> {
    let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    if len == 0 || len > max {
        return Err(ApiError::invalid(
            field,
            format!("must be a non-empty file of at most {max} bytes"),
        ));
    }
    Ok(())
}

fn io_error(what: &str, e: std::io::Error) -> ApiError {
    tracing::error!(error = %e, "{what}");
    ApiError::new(ErrorCode::Internal, format!("{what}; see the server log"))
}
