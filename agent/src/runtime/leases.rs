//! The image layers a container is made of stay in the image store while the container
//! exists: the runtime takes a lease on them before the container is built and gives it
//! back when the container is removed, whichever call removes it (RemoveContainer,
//! RemovePodSandbox, a failed create). The store is below the runtime's concern; it is
//! given as this small interface.

use std::sync::Arc;

/// Keeps layers (by diff_id) from garbage collection for an owner.
pub trait LayerLeases: Send + Sync {
    /// Keeps `diff_ids` for `owner`, in place of what it kept before.
    fn pin(&self, owner: &str, diff_ids: &[String]);
    /// Lets go of what `owner` kept.
    fn unpin(&self, owner: &str);
}

/// The images containers are made of, as the runtime is given them: found by name (a
/// reference or an id) and read into what a container needs (layers, config).
pub trait ImageSource: Send + Sync {
    fn image_root(
        &self,
        name: &str,
    ) -> std::result::Result<super::container::ImageRoot, crate::image::Error>;
}

/// A lease that is given back when dropped (a create's, until the container exists).
pub(super) struct Claim {
    leases: Option<Arc<dyn LayerLeases>>,
    owner: String,
}

impl Claim {
    pub(super) fn take(
        leases: &Option<Arc<dyn LayerLeases>>,
        owner: String,
        diff_ids: &[String],
    ) -> Claim {
        if let Some(leases) = leases {
            leases.pin(&owner, diff_ids);
        }
        Claim {
            leases: leases.clone(),
            owner,
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(leases) = &self.leases {
            leases.unpin(&self.owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{collections::HashMap, sync::Mutex};

    #[derive(Default)]
    struct Recorded(Mutex<HashMap<String, Vec<String>>>);

    impl LayerLeases for Recorded {
        fn pin(&self, owner: &str, diff_ids: &[String]) {
            self.0
                .lock()
                .unwrap()
                .insert(owner.to_string(), diff_ids.to_vec());
        }
        fn unpin(&self, owner: &str) {
            self.0.lock().unwrap().remove(owner);
        }
    }

    #[test]
    fn a_claim_holds_until_dropped() {
        let recorded = Arc::new(Recorded::default());
        let leases: Option<Arc<dyn LayerLeases>> = Some(recorded.clone());
        let claim = Claim::take(&leases, "creating-1".into(), &["sha256:a".into()]);
        assert_eq!(recorded.0.lock().unwrap()["creating-1"], ["sha256:a"]);
        drop(claim);
        assert!(recorded.0.lock().unwrap().is_empty());
        // Without a store, nothing to do.
        drop(Claim::take(&None, "x".into(), &[]));
    }
}
