//! `panal admin export|import`: moves all of Panal's state between stores (embedded ↔ etcd) as
//! JSON lines: a header with the format version, then one line per key. Keys held by leases
//! (host liveness, leadership) are not exported: they describe live processes, not state.

use crate::store_url::{self, StoreArgs};
use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::{Args, Subcommand};
use panal_store::{DynStore, Op, Txn};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

/// Admin commands.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Write every key of a store to a file (or stdout).
    Export(ExportArgs),
    /// Load an export into a store (refused into a non-empty store without --force).
    Import(ImportArgs),
}

/// Arguments of `admin export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Output file (default: stdout).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Arguments of `admin import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The export file.
    #[arg(long = "in", short = 'i', value_name = "FILE")]
    input: PathBuf,
    /// Replace whatever the target store holds.
    #[arg(long)]
    force: bool,
}

#[derive(Serialize, Deserialize)]
struct Header {
    panal_export: u32,
    format: u32,
    keys: usize,
}

#[derive(Serialize, Deserialize)]
struct Line {
    key: String,
    value: String,
}

const ROOT: &str = "/panal/";
/// Operations per transaction (etcd's default limit is 128).
const CHUNK: usize = 100;

/// Runs an admin command.
pub async fn run(cmd: &AdminCommand) -> Result<()> {
    match cmd {
        AdminCommand::Export(a) => {
            let store = store_url::open(&a.store, Duration::from_secs(10)).await?;
            let n = export(&store, a.out.as_ref()).await?;
            eprintln!("exported {n} keys");
            Ok(())
        }
        AdminCommand::Import(a) => {
            let store = store_url::open(&a.store, Duration::from_secs(10)).await?;
            let n = import(&store, &a.input, a.force).await?;
            eprintln!("imported {n} keys");
            Ok(())
        }
    }
}

async fn export(store: &DynStore, out: Option<&PathBuf>) -> Result<usize> {
    let r = store
        .range(ROOT, None, 0)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the store: {e}"))?;
    let kvs: Vec<_> = r.kvs.into_iter().filter(|kv| kv.lease.is_none()).collect();
    let mut w: Box<dyn Write> = match out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot write {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let header = Header {
        panal_export: 1,
        format: panal_server::codec::FORMAT_VERSION,
        keys: kvs.len(),
    };
    writeln!(w, "{}", serde_json::to_string(&header)?)?;
    for kv in &kvs {
        let line = Line {
            key: kv.key.clone(),
            value: base64::engine::general_purpose::STANDARD.encode(&kv.value),
        };
        writeln!(w, "{}", serde_json::to_string(&line)?)?;
    }
    w.flush()?;
    Ok(kvs.len())
}

async fn import(store: &DynStore, input: &PathBuf, force: bool) -> Result<usize> {
    let f =
        std::fs::File::open(input).with_context(|| format!("cannot read {}", input.display()))?;
    let mut lines = std::io::BufReader::new(f).lines();
    let header: Header = serde_json::from_str(&lines.next().context("empty export file")??)
        .context("not a Panal export")?;
    if header.panal_export != 1 {
        bail!("unknown export version {}", header.panal_export);
    }
    if header.format > panal_server::codec::FORMAT_VERSION {
        bail!(
            "the export holds data of format {}; this binary understands formats up to {}",
            header.format,
            panal_server::codec::FORMAT_VERSION
        );
    }
    let mut entries = Vec::with_capacity(header.keys);
    for (i, l) in lines.enumerate() {
        let l = l?;
        if l.trim().is_empty() {
            continue;
        }
        let line: Line = serde_json::from_str(&l)
            .with_context(|| format!("line {} is not an export entry", i + 2))?;
        if !line.key.starts_with(ROOT) {
            bail!("line {}: key {:?} is outside {ROOT}", i + 2, line.key);
        }
        let value = base64::engine::general_purpose::STANDARD
            .decode(&line.value)
            .with_context(|| format!("line {}: bad value", i + 2))?;
        entries.push((line.key, value));
    }
    if entries.len() != header.keys {
        bail!(
            "the export is truncated: header says {} keys, found {}",
            header.keys,
            entries.len()
        );
    }
    let existing = store
        .range(ROOT, None, 0)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the target store: {e}"))?;
    let holds_state = existing
        .kvs
        .iter()
        .any(|kv| kv.lease.is_none() && kv.key != "/panal/meta/format");
    if holds_state && !force {
        bail!(
            "the target store is not empty ({} keys); pass --force to replace its contents",
            existing.kvs.len()
        );
    }
    for chunk in existing.kvs.chunks(CHUNK) {
        let txn = chunk
            .iter()
            .fold(Txn::new(), |t, kv| t.and_then(Op::delete(&kv.key)));
        store
            .txn(txn)
            .await
            .map_err(|e| anyhow::anyhow!("cannot clear the target store: {e}"))?;
    }
    for chunk in entries.chunks(CHUNK) {
        let txn = chunk
            .iter()
            .fold(Txn::new(), |t, (k, v)| t.and_then(Op::put(k, v.clone())));
        store
            .txn(txn)
            .await
            .map_err(|e| anyhow::anyhow!("cannot write the target store: {e}"))?;
    }
    Ok(entries.len())
}
