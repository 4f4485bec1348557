//! Listings without superseded files: the object store the query engine reads the dataset through.
//!
//! A compaction publishes its merged file before it deletes the inputs, so another process that lists
//! a partition in between sees both and would count their rows twice (within `qoeflow serve` the
//! dataset lock already keeps queries and swaps apart). File names say which epochs of which source a
//! file holds, so a listing can tell: a file whose epochs another listed file of its source covers is
//! left out ([`schemas::dataset::superseded`], the rule recovery deletes by). Everything else is the
//! inner store's.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, RenameOptions, Result,
};

/// `inner`, listing no superseded file.
#[derive(Debug)]
pub struct SkipSuperseded {
    inner: Arc<dyn ObjectStore>,
}

impl SkipSuperseded {
    pub fn new(inner: Arc<dyn ObjectStore>) -> SkipSuperseded {
        SkipSuperseded { inner }
    }
}

impl fmt::Display for SkipSuperseded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SkipSuperseded({})", self.inner)
    }
}

/// `objects` without those superseded in their directory.
fn visible(objects: Vec<ObjectMeta>) -> Vec<ObjectMeta> {
    let skipped: std::collections::HashSet<String> =
        schemas::dataset::superseded(objects.iter().map(|o| o.location.as_ref())).into_iter().map(str::to_owned).collect();
    if skipped.is_empty() {
        return objects;
    }
    objects.into_iter().filter(|o| !skipped.contains(o.location.as_ref())).collect()
}

#[async_trait::async_trait]
impl ObjectStore for SkipSuperseded {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    /// The whole listing is read before any of it is returned: whether a file is superseded depends
    /// on the others in its directory. (DataFusion collects a listing whole anyway.)
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let listing = self.inner.list(prefix);
        stream::once(async move {
            let objects: Result<Vec<ObjectMeta>> = listing.collect::<Vec<_>>().await.into_iter().collect();
            match objects {
                Ok(objects) => stream::iter(visible(objects).into_iter().map(Ok)).boxed(),
                Err(e) => stream::iter([Err(e)]).boxed(),
            }
        })
        .flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let mut listed = self.inner.list_with_delimiter(prefix).await?;
        listed.objects = visible(listed.objects);
        Ok(listed)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}
