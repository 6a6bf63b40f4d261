//! Typed identifiers: one newtype per resource so a VM id can never be passed where a host id
//! is expected. All are UUIDs rendered in their hyphenated form: random (v4), except operation
//! ids, which are time-ordered (v7) so that the operations list, in key order, is oldest first.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        typed_id!(@gen $(#[$doc])* $name, uuid::Uuid::new_v4(), "A fresh random identifier.");
    };
    ($(#[$doc:meta])* $name:ident, time_ordered) => {
        typed_id!(@gen $(#[$doc])* $name, uuid::Uuid::now_v7(),
            "A fresh identifier, ordered after every one made before it in this process (UUIDv7: \
             a millisecond timestamp, a counter, then random bits).");
    };
    (@gen $(#[$doc:meta])* $name:ident, $make:expr, $new_doc:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            #[doc = $new_doc]
            pub fn new() -> Self {
                Self($make)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                uuid::Uuid::parse_str(s).map(Self)
            }
        }
    };
}

typed_id!(
    /// Identifies a project (tenant boundary).
    ProjectId
);
typed_id!(
    /// Identifies a virtual machine.
    VmId
);
typed_id!(
    /// Identifies a physical host running an agent.
    HostId
);
typed_id!(
    /// Identifies an image in the image store.
    ImageId
);
typed_id!(
    /// Identifies a long-running operation.
    OperationId, time_ordered
);
typed_id!(
    /// Identifies a storage volume.
    VolumeId
);
typed_id!(
    /// Identifies a virtual network.
    NetworkId
);
typed_id!(
    /// Identifies a security group.
    SecurityGroupId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_sort_by_creation() {
        let ids: Vec<String> = (0..1000).map(|_| OperationId::new().to_string()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }
}
