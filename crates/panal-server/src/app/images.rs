//! Image use cases: import (an operation that copies and hashes the files with progress), list,
//! show, delete (refused while a VM boots from it).

use super::{App, next_token, page_bounds};
use crate::codec::encode;
use crate::images::{ImageStore, check_disk, check_source, copy_hashed, inspect};
use crate::keys;
use panal_store::{Op, Txn};
use panal_types::error::check_name;
use panal_types::image::{Image, ImageAccepted, ImageImport, ImageKind};
use panal_types::operation::{Operation, OperationKind, OperationState, OperationTarget, Progress};
use panal_types::page::Page;
use panal_types::vm::Vm;
use panal_types::{ApiError, DEFAULT_PROJECT, ErrorCode, ImageId, OperationId};
use std::path::PathBuf;
use std::sync::Arc;

impl App {
    fn image_store(&self) -> Result<&Arc<ImageStore>, ApiError> {
        self.images
            .as_ref()
            .ok_or_else(|| ApiError::unavailable("this control plane has no image store"))
    }

    /// Starts importing an image; answers with the operation at once.
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
        let mut sources: Vec<(&'static str, PathBuf)> = Vec::new();
        let (kind, format, virtual_size) = match (&req.kernel_path, &req.disk_path) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(ApiError::invalid(
                    "kernel_path",
                    "give either kernel_path (and initrd_path) or disk_path",
                ));
            }
            (Some(k), None) => {
                if req.format.is_some() {
                    return Err(ApiError::invalid(
                        "format",
                        "format applies to disk images only",
                    ));
                }
                let k = check_source("kernel_path", k)?;
                check_boot_file_size("kernel_path", &k, store.max_boot_file)?;
                sources.push(("kernel", k));
                if let Some(i) = &req.initrd_path {
                    let i = check_source("initrd_path", i)?;
                    check_boot_file_size("initrd_path", &i, store.max_boot_file)?;
                    sources.push(("initrd", i));
                }
                (ImageKind::KernelInitrd, None, None)
            }
            (None, Some(d)) => {
                let format = req.format.ok_or_else(|| {
                    ApiError::invalid(
                        "format",
                        "disk images need a declared format (qcow2 or raw)",
                    )
                })?;
                if req.initrd_path.is_some() {
                    return Err(ApiError::invalid(
                        "initrd_path",
                        "initrd_path goes with kernel_path",
                    ));
                }
                let d = check_source("disk_path", d)?;
                let info = inspect(&store.qemu_img, &d).await?;
                check_disk(&info, format, store.max_virtual_size)?;
                sources.push(("disk", d));
                (ImageKind::Disk, Some(format), Some(info.virtual_size))
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
                message: "copying".into(),
            },
            error: None,
            created_at: now,
            updated_at: now,
            target_generation: 0,
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
            let result = app.copy_image(&store, image, sources, &op_for_task).await;
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

    async fn copy_image(
        &self,
        store: &ImageStore,
        mut image: Image,
        sources: Vec<(&'static str, PathBuf)>,
        op: &Operation,
    ) -> Result<(), ApiError> {
        let total: u64 = sources
            .iter()
            .filter_map(|(_, p)| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum::<u64>()
            .max(1);
        let dir = store.image_dir(image.id);
        let partial = dir.with_extension("partial");
        tokio::fs::create_dir_all(&partial)
            .await
            .map_err(|e| io_error("cannot create the image directory", e))?;
        let mut hasher_input = String::new();
        let mut copied = 0u64;
        let mut last_percent = 0u8;
        for (which, src) in &sources {
            let base = copied;
            let mut updates = Vec::new();
            let (n, sum) = copy_hashed(src, &partial.join(which), |done| {
                let pct = (((base + done) * 99) / total) as u8;
                if pct >= last_percent + 10 {
                    last_percent = pct;
                    updates.push(pct);
                }
            })
            .await
            .map_err(|e| io_error("copy failed", e))?;
            for pct in updates {
                let mut cur = op.clone();
                cur.progress = Progress {
                    percent: Some(pct),
                    message: format!("copying {which}"),
                };
                cur.updated_at = chrono::Utc::now();
                let _ = self
                    .repo
                    .txn(Txn::new().and_then(Op::put(&keys::op(&op.id), encode(&cur))))
                    .await;
            }
            copied += n;
            hasher_input.push_str(&sum);
        }
        image.size_bytes = copied;
        image.sha256 = if sources.len() == 1 {
            hasher_input
        } else {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(hasher_input.as_bytes()))
        };
        tokio::fs::rename(&partial, &dir)
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
