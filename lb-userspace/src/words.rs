//! Words a user writes for a setting: the quoting of values in error messages, and the
//! macro that makes an enum of words (parsed, shown, serialised and offered on the command
//! line from one list).

use std::fmt;

/// A value from the operator, quoted for an error message and cut to a readable length.
/// Control characters come out escaped, so the message stays on one line.
pub fn quote(value: &str) -> String {
    const MAX: usize = 60;
    if value.chars().count() <= MAX {
        format!("{value:?}")
    } else {
        let cut: String = value.chars().take(MAX).collect();
        format!("{cut:?}... ({} characters)", value.chars().count())
    }
}

/// Marks an error message as one of ours (a value that is wrong), so the parser reports
/// it under the field's path rather than the file line (see `config::file`). It cannot
/// occur in a message otherwise: quoted values are escaped.
pub const INVALID: char = '\u{1f}';

/// The serde error for a wrong value: `message` is shown after the field's path.
pub fn invalid<E: serde::de::Error>(message: impl fmt::Display) -> E {
    E::custom(format!("{INVALID}{message}"))
}

/// Defines an enum of words: `Display`, `FromStr` (with a one-line error naming the
/// choices), serde as the word, and clap's `ValueEnum`.
macro_rules! words {
    (
        $(#[$meta:meta])*
        pub enum $name:ident expecting $expected:literal {
            $($(#[$vmeta:meta])* $variant:ident = $word:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
        pub enum $name {
            $($(#[$vmeta])* #[value(name = $word)] $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The word for the value, as written in files and on the command line.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($word => Ok($name::$variant),)*
                    _ => Err(format!("{} is not {}", $crate::words::quote(s), $expected)),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err($crate::words::invalid)
            }
        }
    };
}
pub(crate) use words;
