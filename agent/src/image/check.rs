//! The store checked against itself, as fsck checks a filesystem: every blob against its
//! digest, every image's blobs and layers present, every layer whole, nothing unreferenced.
//! With `repair`, what is wrong goes: corrupt blobs, images that lost a part (pull them
//! again), and whatever nothing refers to any more.

use std::collections::{BTreeMap, BTreeSet};

use super::{ImageStore, Result, digest::Digest};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A blob whose bytes are not its digest.
    CorruptBlob,
    /// A blob an image names that is not in the store.
    MissingBlob,
    /// A layer an image names that is not in the store.
    MissingLayer,
    /// A layer directory without its record or its tree.
    BrokenLayer,
    /// A blob no image names.
    OrphanBlob,
    /// A layer no image or container uses.
    OrphanLayer,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::CorruptBlob => "corrupt-blob",
            Kind::MissingBlob => "missing-blob",
            Kind::MissingLayer => "missing-layer",
            Kind::BrokenLayer => "broken-layer",
            Kind::OrphanBlob => "orphan-blob",
            Kind::OrphanLayer => "orphan-layer",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: Kind,
    pub digest: Digest,
    /// The images (ids) that name the blob or layer.
    pub images: Vec<String>,
    pub detail: String,
    pub repaired: bool,
}

#[derive(Debug, Default)]
pub struct Report {
    pub images: usize,
    pub blobs: usize,
    pub layers: usize,
    pub problems: Vec<Problem>,
}

impl ImageStore {
    /// Checks (and with `repair`, mends) the store. Blocking: it reads every blob. Pulls,
    /// removals and other checks wait meanwhile.
    pub fn check(&self, repair: bool) -> Result<Report> {
        let _gc = self.gc.blocking_write();
        let records = self.list();
        let mut names_blob: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
        let mut names_layer: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
        for image in &records {
            let id = image.id.to_string();
            let blobs = [&image.id, &image.manifest]
                .into_iter()
                .chain(image.index.as_ref())
                .chain(image.layers.iter().map(|l| &l.digest));
            for blob in blobs {
                names_blob.entry(blob.clone()).or_default().push(id.clone());
            }
            for layer in &image.layers {
                names_layer
                    .entry(layer.diff_id.clone())
                    .or_default()
                    .push(id.clone());
            }
        }
        let pinned: BTreeSet<Digest> = self.pins().values().flatten().cloned().collect();
        let mut report = Report {
            images: records.len(),
            ..Report::default()
        };
        let mut problem =
            |kind: Kind, digest: &Digest, images: Option<&Vec<String>>, detail: String| {
                report.problems.push(Problem {
                    kind,
                    digest: digest.clone(),
                    images: images.cloned().unwrap_or_default(),
                    detail,
                    repaired: false,
                });
            };

        let stored: BTreeSet<Digest> = self.content.list()?.into_iter().collect();
        for digest in &stored {
            match self.content.verify(digest) {
                Ok(()) => {}
                Err(detail) => problem(Kind::CorruptBlob, digest, names_blob.get(digest), detail),
            }
            if !names_blob.contains_key(digest) {
                problem(Kind::OrphanBlob, digest, None, "no image names it".into());
            }
        }
        for (digest, images) in &names_blob {
            if !stored.contains(digest) {
                problem(
                    Kind::MissingBlob,
                    digest,
                    Some(images),
                    "not in the store".into(),
                );
            }
        }
        let layers: BTreeSet<Digest> = self.layers.list()?.into_iter().collect();
        for diff_id in &layers {
            if let Err(detail) = self.layers.verify(diff_id) {
                problem(Kind::BrokenLayer, diff_id, names_layer.get(diff_id), detail);
            } else if !names_layer.contains_key(diff_id) && !pinned.contains(diff_id) {
                problem(
                    Kind::OrphanLayer,
                    diff_id,
                    None,
                    "no image or container uses it".into(),
                );
            }
        }
        for (diff_id, images) in &names_layer {
            if !layers.contains(diff_id) {
                problem(
                    Kind::MissingLayer,
                    diff_id,
                    Some(images),
                    "not in the store".into(),
                );
            }
        }
        report.blobs = stored.len();
        report.layers = layers.len();
        report
            .problems
            .sort_by(|a, b| (a.kind, &a.digest).cmp(&(b.kind, &b.digest)));
        if repair && !report.problems.is_empty() {
            self.repair(&mut report)?;
        }
        Ok(report)
    }

    /// Removes the corrupt and broken parts and the images that named them (or a missing
    /// part), then whatever is left unreferenced. Layers that containers use stay.
    fn repair(&self, report: &mut Report) -> Result<()> {
        let mut doomed: BTreeSet<String> = BTreeSet::new();
        for p in &report.problems {
            match p.kind {
                Kind::CorruptBlob => self.content.remove(&p.digest)?,
                Kind::BrokenLayer => self.layers.remove(&p.digest)?,
                _ => {}
            }
            if matches!(
                p.kind,
                Kind::CorruptBlob | Kind::MissingBlob | Kind::MissingLayer | Kind::BrokenLayer
            ) {
                doomed.extend(p.images.iter().cloned());
            }
        }
        if !doomed.is_empty() {
            self.records()
                .update(|all| all.retain(|i| !doomed.contains(&i.id.to_string())))?;
            tracing::warn!(images = ?doomed, "check: removed images that lost a part; pull them again");
        }
        self.collect_garbage()?;
        let blobs: BTreeSet<Digest> = self.content.list()?.into_iter().collect();
        let layers: BTreeSet<Digest> = self.layers.list()?.into_iter().collect();
        for p in &mut report.problems {
            p.repaired = match p.kind {
                Kind::CorruptBlob | Kind::OrphanBlob => !blobs.contains(&p.digest),
                Kind::BrokenLayer | Kind::OrphanLayer => !layers.contains(&p.digest),
                Kind::MissingBlob | Kind::MissingLayer => {
                    p.images.iter().all(|i| doomed.contains(i))
                }
            };
        }
        if report.problems.iter().any(|p| !p.repaired) {
            tracing::warn!("check: some problems could not be repaired");
        }
        Ok(())
    }
}
