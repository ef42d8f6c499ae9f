//! Typed ids: a user id cannot be passed where a tenant id is expected.
//! On the wire every id is a decimal string (API.md: "ids are strings").

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub i64);

        impl $name {
            /// Parses the decimal string form used in URLs and JSON.
            pub fn parse(s: &str) -> Option<Self> {
                s.parse::<i64>().ok().filter(|v| *v > 0).map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                // Accept "42" (the contract) and 42 (lenient clients).
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    S(String),
                    N(i64),
                }
                let v = match Raw::deserialize(d)? {
                    Raw::S(s) => s.parse::<i64>().map_err(serde::de::Error::custom)?,
                    Raw::N(n) => n,
                };
                if v <= 0 {
                    return Err(serde::de::Error::custom("ids are positive"));
                }
                Ok($name(v))
            }
        }
    };
}

id_type!(
    /// A global user (public.users).
    UserId
);
id_type!(
    /// A tenant (public.tenants).
    TenantId
);
