//! Typed identifiers: one newtype per resource so a VM id can never be passed where a host id
//! is expected. All are random UUIDs (v4) rendered in their hyphenated form.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            /// A fresh random identifier.
            pub fn new() -> Self {
                Self(uuid::Uuid::new_v4())
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
    OperationId
);
typed_id!(
    /// Identifies a storage volume.
    VolumeId
);
