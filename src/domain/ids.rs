//! Identifiers that travel in URLs, logs, metrics and queue names.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{0} must be 1 to 64 characters of A-Z a-z 0-9 . _ -")]
    BadChars(&'static str),
    #[error("event id must be `evt_` followed by a ULID")]
    BadEventId,
}

/// Only a conservative alphabet, because ids appear in URL paths, metric
/// labels and log lines, where anything else would need escaping.
fn check_slug(kind: &'static str, text: &str) -> Result<(), IdError> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(IdError::BadChars(kind))
    }
}

macro_rules! slug_id {
    ($name:ident, $kind:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(text: &str) -> Result<Self, IdError> {
                check_slug($kind, text)?;
                Ok(Self(text.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(text: String) -> Result<Self, IdError> {
                check_slug($kind, &text)?;
                Ok(Self(text))
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::try_from(text).map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

slug_id!(AccountId, "account id");
slug_id!(EndpointId, "endpoint id");

/// `evt_` + a ULID: sortable by creation time, unique without coordination, so
/// several ingress processes can mint ids independently.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    pub fn generate() -> Self {
        Self(format!("evt_{}", ulid::Ulid::new()))
    }

    pub fn parse(text: &str) -> Result<Self, IdError> {
        let ulid = text.strip_prefix("evt_").ok_or(IdError::BadEventId)?;
        ulid::Ulid::from_string(ulid).map_err(|_| IdError::BadEventId)?;
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for EventId {
    type Error = IdError;
    fn try_from(text: String) -> Result<Self, IdError> {
        Self::parse(&text)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert!(AccountId::parse("cbb-main").is_ok());
        assert!(AccountId::parse("a.b_c-1").is_ok());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(AccountId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn event_ids_round_trip() {
        let id = EventId::generate();
        assert_eq!(EventId::parse(id.as_str()), Ok(id.clone()));
        assert!(EventId::parse("evt_nope").is_err());
        assert!(EventId::parse("01JD0000000000000000000000").is_err());
    }
}
