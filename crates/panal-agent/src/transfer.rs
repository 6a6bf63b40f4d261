//! Moving volume bytes between this host and the control plane (exports, moves to another
//! host): the file read as a stream of chunks that hashes and counts as it goes, and the
//! receiving end, which writes a stream into a file (leaving holes where whole blocks are
//! zero, so a thin or sparse file stays thin) and hashes what it wrote.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use panal_types::volume::FileDigest;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::io::SeekFrom;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Bytes per chunk read from a file.
const CHUNK: usize = 1 << 20;
/// Blocks of zeroes this large are skipped (left as holes) when writing.
const HOLE: usize = 64 << 10;

static ZEROES: [u8; HOLE] = [0; HOLE];

/// A running SHA-256 shared with a stream.
pub type SharedHash = Arc<Mutex<Sha256>>;

/// The chunks of `file`, each added to `hash` (when given) and counted in `done`.
pub fn file_chunks(
    file: tokio::fs::File,
    hash: Option<SharedHash>,
    done: Arc<AtomicU64>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::try_unfold(file, move |mut f| {
        let (hash, done) = (hash.clone(), done.clone());
        async move {
            let mut buf = vec![0u8; CHUNK];
            let n = f.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            if let Some(h) = &hash {
                h.lock().update(&buf);
            }
            done.fetch_add(n as u64, Ordering::Relaxed);
            Ok(Some((Bytes::from(buf), f)))
        }
    })
}

/// A reader that counts what is read through it (for progress).
pub struct Counted<R> {
    inner: R,
    done: Arc<AtomicU64>,
}

impl<R> Counted<R> {
    /// Counts what is read from `inner` into `done`.
    pub fn new(inner: R, done: Arc<AtomicU64>) -> Self {
        Self { inner, done }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.done.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

/// The hex digest of a shared hash (consumes what it has seen so far).
pub fn finish(hash: &SharedHash) -> String {
    hex::encode(std::mem::take(&mut *hash.lock()).finalize())
}

/// Writes a stream into a new file `dst` (at most `limit` bytes), syncs it, and returns the
/// length and SHA-256 of what was written. `done` counts bytes as they arrive.
pub async fn write_chunks<S>(
    mut chunks: S,
    dst: &Path,
    limit: u64,
    done: &AtomicU64,
) -> Result<FileDigest, String>
where
    S: Stream<Item = Result<Bytes, String>> + Unpin,
{
    let mut out = tokio::fs::File::create(dst)
        .await
        .map_err(|e| format!("cannot write {}: {e}", dst.display()))?;
    let io = |e: std::io::Error| format!("cannot write {}: {e}", dst.display());
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        len += chunk.len() as u64;
        if len > limit {
            return Err(format!("more than the expected {limit} bytes arrived"));
        }
        hasher.update(&chunk);
        for block in chunk.chunks(HOLE) {
            // A slice comparison is a memcmp, fast in any build.
            if block == &ZEROES[..block.len()] {
                out.seek(SeekFrom::Current(block.len() as i64))
                    .await
                    .map_err(io)?;
            } else {
                out.write_all(block).await.map_err(io)?;
            }
        }
        done.store(len, Ordering::Relaxed);
    }
    // Trailing holes: the length is set, not written.
    out.set_len(len).await.map_err(io)?;
    out.sync_all().await.map_err(io)?;
    Ok(FileDigest {
        size_bytes: len,
        sha256: hex::encode(hasher.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_goes_through_chunks_and_back_with_its_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let mut bytes = vec![0u8; 3 * CHUNK + 123];
        bytes[5] = 1;
        bytes[2 * CHUNK + 7] = 9;
        std::fs::write(&src, &bytes).unwrap();
        let hash: SharedHash = Arc::default();
        let sent = Arc::new(AtomicU64::new(0));
        let chunks = file_chunks(
            tokio::fs::File::open(&src).await.unwrap(),
            Some(hash.clone()),
            sent.clone(),
        )
        .map(|c| c.map_err(|e| e.to_string()));
        let dst = dir.path().join("dst");
        let got = AtomicU64::new(0);
        let d = write_chunks(Box::pin(chunks), &dst, 1 << 30, &got)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), bytes);
        assert_eq!(d.size_bytes, bytes.len() as u64);
        assert_eq!(d.sha256, finish(&hash));
        assert_eq!(sent.load(Ordering::Relaxed), bytes.len() as u64);
        use std::os::unix::fs::MetadataExt;
        let blocks = std::fs::metadata(&dst).unwrap().blocks() * 512;
        assert!(
            blocks < bytes.len() as u64 / 2,
            "holes stay holes: {blocks}"
        );
        // Over the limit: refused.
        let chunks = file_chunks(tokio::fs::File::open(&src).await.unwrap(), None, sent)
            .map(|c| c.map_err(|e| e.to_string()));
        assert!(
            write_chunks(Box::pin(chunks), &dst, 1000, &got)
                .await
                .is_err()
        );
    }
}
