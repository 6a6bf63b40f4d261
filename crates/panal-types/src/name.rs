//! Resource names: the one naming rule shared by projects, VMs, images, hosts and later volumes
//! and networks. Lowercase letters, digits and `-`, 1 to 63 characters, starting with a letter or
//! digit and not ending with `-` (a DNS label), so names are safe in paths, keys and hostnames.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest name accepted (a DNS label).
pub const MAX_NAME_LEN: usize = 63;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// name must not be empty
    #[error("name must not be empty")]
    Empty,
    /// name is longer than 63 characters
    #[error("name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    /// name may hold only lowercase letters, digits and '-'
    #[error("name may hold only lowercase letters, digits and '-' (found {0:?})")]
    BadChar(char),
    /// name must start and end with a letter or digit
    #[error("name must start and end with a lowercase letter or digit")]
    BadEdge,
}

/// A validated resource name.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")]
pub struct Name(String);

impl Name {
    /// Validates `s` against the naming rule.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(NameError::BadChar(c));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(NameError::BadEdge);
        }
        Ok(Self(s.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Name::parse(&s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        for ok in ["a", "web-1", "0x", &"a".repeat(63)] {
            assert!(Name::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(Name::parse(""), Err(NameError::Empty));
        assert_eq!(Name::parse(&"a".repeat(64)), Err(NameError::TooLong));
        assert_eq!(Name::parse("../x"), Err(NameError::BadChar('.')));
        assert_eq!(Name::parse("a,b"), Err(NameError::BadChar(',')));
        assert_eq!(Name::parse("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(Name::parse("a\0b"), Err(NameError::BadChar('\0')));
        assert_eq!(Name::parse("Web"), Err(NameError::BadChar('W')));
        assert_eq!(Name::parse("-x"), Err(NameError::BadEdge));
        assert_eq!(Name::parse("x-"), Err(NameError::BadEdge));
    }
}
