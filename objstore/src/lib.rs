//! Where qoeflow keeps what outlives a process: the Parquet dataset and the pipeline's checkpoints. A
//! [`Location`] is a local directory (`/path`, `file:///path`; the default) or a prefix in an S3 bucket
//! (`s3://bucket/prefix`, through the `object_store` crate, which DataFusion reads with too), addressed by
//! `/`-separated keys relative to it.
//!
//! **Commit without a rename.** An S3 bucket has no atomic rename, so files that must appear only once
//! their epoch is committed are written in two steps: [`Location::stage`] uploads the bytes where no
//! reader sees them, [`Location::publish`] makes them appear whole under their final key.
//!
//! | step | local directory | S3 |
//! | --- | --- | --- |
//! | stage | `<dir>/.<name>.tmp`, fsynced (names starting with `.` are never read) | a multipart upload of one part, not completed (invisible to every reader) |
//! | publish | rename to `<dir>/<name>`, fsync of the directory | CompleteMultipartUpload: the object appears whole, atomically |
//!
//! A [`Staged`] handle is small and serialisable: the pipeline records the staged files of an epoch in
//! its checkpoint, so a crash between the checkpoint and the publication is finished at restart
//! (publishing again is harmless), and files staged by an epoch that never committed are never
//! published. S3 buckets should carry the usual lifecycle rule that aborts incomplete multipart uploads
//! after a day, which removes what a crashed or fenced writer staged.
//!
//! **S3 settings** come from the standard AWS environment, as `object_store` reads it: `AWS_REGION`
//! (or `AWS_DEFAULT_REGION`), `AWS_ENDPOINT_URL` for S3-compatible servers (MinIO, Ceph, moto;
//! path-style requests), `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint, and credentials from
//! `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, a web identity token (EKS service
//! accounts: `AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`), ECS task credentials or the instance
//! metadata service, in that order.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),
    #[error("{op} {key}: {source}")]
    Io {
        op: &'static str,
        key: String,
        source: std::io::Error,
    },
    #[error("{op} {key}: {source}")]
    Store {
        op: &'static str,
        key: String,
        source: object_store::Error,
    },
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

enum Backend {
    Local {
        root: PathBuf,
    },
    S3 {
        store: Arc<AmazonS3>,
        bucket: String,
    },
}

/// A directory or bucket prefix (cheap to clone).
#[derive(Clone)]
pub struct Location {
    backend: Arc<Backend>,
    /// `/`-separated, no leading or trailing `/`; empty for the root.
    prefix: String,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url())
    }
}

/// One object under a location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the location listed.
    pub key: String,
    pub size: u64,
}

/// A file written but not yet visible (see the module header); [`Location::publish`] makes it appear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// The final key, relative to the location it was staged in.
    pub key: String,
    /// S3: the multipart upload holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<Upload>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    pub id: String,
    pub part: String,
}

impl Location {
    /// A local directory (`/path`, `./path`, `file:///path`) or `s3://bucket[/prefix]`, S3 settings
    /// from the environment.
    pub fn parse(url: &str) -> Result<Location> {
        Location::parse_with(url, &[])
    }

    /// [`Location::parse`] with S3 settings (`object_store`'s keys: `endpoint`, `region`,
    /// `access_key_id`, `allow_http`, …) over those of the environment.
    pub fn parse_with(url: &str, s3_options: &[(&str, &str)]) -> Result<Location> {
        if let Some(rest) = url
            .strip_prefix("s3://")
            .or_else(|| url.strip_prefix("s3a://"))
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::Invalid(format!(
                    "{url}: an S3 location needs a bucket: s3://bucket/prefix"
                )));
            }
            let mut builder = AmazonS3Builder::from_env();
            for (key, value) in s3_options {
                let key = key
                    .parse()
                    .map_err(|e| Error::Invalid(format!("S3 setting {key:?}: {e}")))?;
                builder = builder.with_config(key, *value);
            }
            let store =
                builder
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|source| Error::Store {
                        op: "configuring S3 for",
                        key: url.to_owned(),
                        source,
                    })?;
            let location = Location {
                backend: Arc::new(Backend::S3 {
                    store: Arc::new(store),
                    bucket: bucket.to_owned(),
                }),
                prefix: String::new(),
            };
            return Ok(location.join(prefix));
        }
        if let Some((scheme, _)) = url.split_once("://")
            && scheme != "file"
        {
            return Err(Error::Invalid(format!(
                "{url}: unsupported location scheme {scheme:?}: use a path, file:// or s3://"
            )));
        }
        Ok(Location::local(url.strip_prefix("file://").unwrap_or(url)))
    }

    pub fn local(dir: impl Into<PathBuf>) -> Location {
        Location {
            backend: Arc::new(Backend::Local { root: dir.into() }),
            prefix: String::new(),
        }
    }

    /// The location `rel` (`/`-separated) below this one.
    pub fn join(&self, rel: &str) -> Location {
        let rel = rel.trim_matches('/');
        let prefix = match (self.prefix.is_empty(), rel.is_empty()) {
            (_, true) => self.prefix.clone(),
            (true, false) => rel.to_owned(),
            (false, false) => format!("{}/{rel}", self.prefix),
        };
        Location {
            backend: self.backend.clone(),
            prefix,
        }
    }

    /// `s3://bucket/prefix` or the directory's path.
    pub fn url(&self) -> String {
        match &*self.backend {
            Backend::Local { .. } => self
                .local_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            Backend::S3 { bucket, .. } if self.prefix.is_empty() => format!("s3://{bucket}"),
            Backend::S3 { bucket, .. } => format!("s3://{bucket}/{}", self.prefix),
        }
    }

    /// The directory, for a local location.
    pub fn local_dir(&self) -> Option<PathBuf> {
        match &*self.backend {
            Backend::Local { root } => Some(
                self.prefix
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .fold(root.clone(), |p, s| p.join(s)),
            ),
            Backend::S3 { .. } => None,
        }
    }

    /// For a remote location, the store and the URL of its bucket (`s3://bucket`), to register with a
    /// query engine.
    pub fn object_store(&self) -> Option<(String, Arc<dyn ObjectStore>)> {
        match &*self.backend {
            Backend::Local { .. } => None,
            Backend::S3 { store, bucket } => Some((
                format!("s3://{bucket}"),
                store.clone() as Arc<dyn ObjectStore>,
            )),
        }
    }

    fn object_path(&self, key: &str) -> Result<ObjectPath> {
        let full = if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        };
        ObjectPath::parse(&full)
            .map_err(|e| Error::Invalid(format!("invalid object key {full:?}: {e}")))
    }

    fn file(&self, key: &str) -> Result<PathBuf> {
        if key
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(Error::Invalid(format!("invalid key {key:?}")));
        }
        let dir = self
            .local_dir()
            .ok_or_else(|| Error::Invalid("not a local location".into()))?;
        Ok(key.split('/').fold(dir, |p, s| p.join(s)))
    }

    /// Writes `data` under `key`, replacing what is there; visible whole or not at all, and durable
    /// when this returns.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        match &*self.backend {
            Backend::Local { .. } => {
                let path = self.file(key)?;
                let key = key.to_owned();
                blocking(move || {
                    write_durably(&path, &data, false)
                        .map(|_| ())
                        .map_err(|source| Error::Io {
                            op: "writing",
                            key,
                            source,
                        })
                })
                .await
            }
            Backend::S3 { store, .. } => {
                let path = self.object_path(key)?;
                store
                    .put(&path, PutPayload::from(data))
                    .await
                    .map_err(|source| Error::Store {
                        op: "PUT",
                        key: key.to_owned(),
                        source,
                    })?;
                Ok(())
            }
        }
    }

    /// Writes `data` under `key` only if nothing is there yet (S3: `If-None-Match: *`). Returns false,
    /// writing nothing, if the key exists.
    pub async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<bool> {
        match &*self.backend {
            Backend::Local { .. } => {
                let path = self.file(key)?;
                let key = key.to_owned();
                blocking(move || {
                    write_durably(&path, &data, true).map_err(|source| Error::Io {
                        op: "creating",
                        key,
                        source,
                    })
                })
                .await
            }
            Backend::S3 { store, .. } => {
                let path = self.object_path(key)?;
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                match store.put_opts(&path, PutPayload::from(data), opts).await {
                    Ok(_) => Ok(true),
                    Err(
                        object_store::Error::AlreadyExists { .. }
                        | object_store::Error::Precondition { .. },
                    ) => Ok(false),
                    Err(source) => Err(Error::Store {
                        op: "conditional PUT",
                        key: key.to_owned(),
                        source,
                    }),
                }
            }
        }
    }

    /// The object under `key`, or None.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        match &*self.backend {
            Backend::Local { .. } => {
                let path = self.file(key)?;
                let key = key.to_owned();
                blocking(move || match std::fs::read(&path) {
                    Ok(b) => Ok(Some(Bytes::from(b))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(Error::Io {
                        op: "reading",
                        key,
                        source,
                    }),
                })
                .await
            }
            Backend::S3 { store, .. } => {
                let path = self.object_path(key)?;
                match store.get(&path).await {
                    Ok(r) => Ok(Some(r.bytes().await.map_err(|source| Error::Store {
                        op: "GET",
                        key: key.to_owned(),
                        source,
                    })?)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(source) => Err(Error::Store {
                        op: "GET",
                        key: key.to_owned(),
                        source,
                    }),
                }
            }
        }
    }

    /// Every object below `prefix` (recursively; `""` for all), keys relative to this location, sorted.
    /// Local listings include temporary (`.`-prefixed) files.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        let mut out = match &*self.backend {
            Backend::Local { .. } => {
                let dir = if prefix.is_empty() {
                    self.local_dir().unwrap_or_default()
                } else {
                    self.file(prefix.trim_end_matches('/'))?
                };
                let base = self.local_dir().unwrap_or_default();
                let key = prefix.to_owned();
                blocking(move || {
                    list_local(&base, &dir).map_err(|source| Error::Io {
                        op: "listing",
                        key,
                        source,
                    })
                })
                .await?
            }
            Backend::S3 { store, .. } => {
                let below = self.join(prefix);
                let path = if below.prefix.is_empty() {
                    None
                } else {
                    Some(
                        ObjectPath::parse(&below.prefix)
                            .map_err(|e| Error::Invalid(e.to_string()))?,
                    )
                };
                let strip = if self.prefix.is_empty() {
                    String::new()
                } else {
                    format!("{}/", self.prefix)
                };
                let metas: Vec<_> =
                    store
                        .list(path.as_ref())
                        .try_collect()
                        .await
                        .map_err(|source| Error::Store {
                            op: "LIST",
                            key: below.url(),
                            source,
                        })?;
                metas
                    .into_iter()
                    .filter_map(|m| {
                        Some(Entry {
                            key: m.location.as_ref().strip_prefix(&strip)?.to_owned(),
                            size: m.size,
                        })
                    })
                    .collect()
            }
        };
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Deletes `key`; a missing key is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match &*self.backend {
            Backend::Local { .. } => {
                let path = self.file(key)?;
                let key = key.to_owned();
                blocking(move || match std::fs::remove_file(&path) {
                    Ok(()) => path
                        .parent()
                        .map_or(Ok(()), fsync_dir)
                        .map_err(|source| Error::Io {
                            op: "deleting",
                            key,
                            source,
                        }),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(source) => Err(Error::Io {
                        op: "deleting",
                        key,
                        source,
                    }),
                })
                .await
            }
            Backend::S3 { store, .. } => {
                let path = self.object_path(key)?;
                match store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(source) => Err(Error::Store {
                        op: "DELETE",
                        key: key.to_owned(),
                        source,
                    }),
                }
            }
        }
    }

    /// Uploads `data` for `key` without making it visible (see the module header).
    pub async fn stage(&self, key: &str, data: Bytes) -> Result<Staged> {
        match &*self.backend {
            Backend::Local { .. } => {
                let tmp = self.file(&staging_key(key))?;
                let k = key.to_owned();
                blocking(move || {
                    write_durably(&tmp, &data, false).map_err(|source| Error::Io {
                        op: "staging",
                        key: k,
                        source,
                    })
                })
                .await?;
                Ok(Staged {
                    key: key.to_owned(),
                    upload: None,
                })
            }
            Backend::S3 { store, .. } => {
                let path = self.object_path(key)?;
                let err = |op| {
                    move |source| Error::Store {
                        op,
                        key: key.to_owned(),
                        source,
                    }
                };
                let id = store
                    .create_multipart(&path)
                    .await
                    .map_err(err("CreateMultipartUpload"))?;
                let part = store
                    .put_part(&path, &id, 0, PutPayload::from(data))
                    .await
                    .map_err(err("UploadPart"))?;
                Ok(Staged {
                    key: key.to_owned(),
                    upload: Some(Upload {
                        id,
                        part: part.content_id,
                    }),
                })
            }
        }
    }

    /// Makes a staged file visible under its key. Publishing what was already published succeeds.
    pub async fn publish(&self, staged: &Staged) -> Result<()> {
        let key = staged.key.clone();
        match (&*self.backend, &staged.upload) {
            (Backend::Local { .. }, _) => {
                let (tmp, path) = (self.file(&staging_key(&key))?, self.file(&key)?);
                blocking(move || match std::fs::rename(&tmp, &path) {
                    Ok(()) => path
                        .parent()
                        .map_or(Ok(()), fsync_dir)
                        .map_err(|source| Error::Io {
                            op: "publishing",
                            key,
                            source,
                        }),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.exists() => Ok(()),
                    Err(source) => Err(Error::Io {
                        op: "publishing",
                        key,
                        source,
                    }),
                })
                .await
            }
            (Backend::S3 { store, .. }, Some(upload)) => {
                let path = self.object_path(&key)?;
                let parts = vec![PartId {
                    content_id: upload.part.clone(),
                }];
                match store.complete_multipart(&path, &upload.id, parts).await {
                    Ok(_) => Ok(()),
                    // Completed before (a publication repeated after a crash): the object is there.
                    Err(source) => match store.head(&path).await {
                        Ok(_) => Ok(()),
                        Err(_) => Err(Error::Store {
                            op: "CompleteMultipartUpload",
                            key,
                            source,
                        }),
                    },
                }
            }
            (Backend::S3 { .. }, None) => Err(Error::Invalid(format!(
                "{key}: staged locally, cannot be published to S3"
            ))),
        }
    }
}

/// `<dir>/.<name>.tmp` for `<dir>/<name>`.
fn staging_key(key: &str) -> String {
    match key.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/.{name}.tmp"),
        None => format!(".{key}.tmp"),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `dir` and its missing parents, making each new directory entry durable.
fn create_dirs(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => dir.parent().map_or(Ok(()), fsync_dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes `path` whole and durably: a temporary file, fsync, then rename (or, with `create_only`, a
/// hard link that fails if `path` exists: returns false then), and an fsync of the directory.
fn write_durably(path: &Path, data: &[u8], create_only: bool) -> std::io::Result<bool> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("no parent directory"))?;
    create_dirs(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.w", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    let placed = if create_only {
        let linked = std::fs::hard_link(&tmp, path);
        std::fs::remove_file(&tmp)?;
        match linked {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e),
        }
    } else {
        std::fs::rename(&tmp, path)?;
        true
    };
    fsync_dir(dir)?;
    Ok(placed)
}

fn list_local(base: &Path, dir: &Path) -> std::io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(base) {
                let key = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push(Entry {
                    key,
                    size: meta.len(),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_staged_files_appear_only_when_published() {
        let dir = tempfile::tempdir().unwrap();
        let loc = Location::parse(&format!("file://{}", dir.path().display()))
            .unwrap()
            .join("t");
        let staged = loc
            .stage("a/dt=1/part-x.parquet", Bytes::from_static(b"one"))
            .await
            .unwrap();
        let keys: Vec<String> = loc
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, vec!["a/dt=1/.part-x.parquet.tmp".to_string()]);
        assert_eq!(loc.get("a/dt=1/part-x.parquet").await.unwrap(), None);
        loc.publish(&staged).await.unwrap();
        loc.publish(&staged).await.unwrap();
        assert_eq!(
            loc.get("a/dt=1/part-x.parquet").await.unwrap().as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(
            loc.list("a").await.unwrap(),
            vec![Entry {
                key: "a/dt=1/part-x.parquet".into(),
                size: 3
            }]
        );

        assert!(
            loc.put_if_absent("c/intent", Bytes::from_static(b"1"))
                .await
                .unwrap()
        );
        assert!(
            !loc.put_if_absent("c/intent", Bytes::from_static(b"2"))
                .await
                .unwrap()
        );
        assert_eq!(
            loc.get("c/intent").await.unwrap().as_deref(),
            Some(&b"1"[..])
        );
        loc.delete("c/intent").await.unwrap();
        loc.delete("c/intent").await.unwrap();
        assert!(
            loc.get("../x").await.is_err(),
            "keys cannot leave the location"
        );
        assert!(Location::parse("gs://b/p").is_err());
        assert!(Location::parse("s3:///p").is_err());
    }
}
