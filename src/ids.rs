//! Typed ids: a user id cannot be passed where a tenant id is expected.
//! On the wire every id is a decimal string (API.md: "ids are strings").

/// Serialises a row's raw `i64` id as the contract's decimal string
/// (`#[serde(serialize_with = "crate::ids::as_string")]`).
pub fn as_string<S: serde::Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[macro_export]
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

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&self.0)
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                // Accept "42" (the contract) and 42 (lenient clients).
                #[derive(::serde::Deserialize)]
                #[serde(untagged)]
                enum Raw {
                    S(String),
                    N(i64),
                }
                let v = match <Raw as ::serde::Deserialize>::deserialize(d)? {
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

crate::id_type!(
    /// A global user (public.users).
    UserId
);
crate::id_type!(
    /// A tenant (public.tenants).
    TenantId
);

/// Percent-encodes everything but RFC 3986's unreserved characters (for
/// query values in URLs we build).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
