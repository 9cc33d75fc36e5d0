//! The two environments, and a pair of values indexed by them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One of the two environments. Exactly one is live at any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Blue,
    Green,
}

impl Side {
    /// Both sides, in a fixed order (blue first).
    pub const ALL: [Side; 2] = [Side::Blue, Side::Green];

    /// The other environment.
    pub fn other(self) -> Side {
        match self {
            Side::Blue => Side::Green,
            Side::Green => Side::Blue,
        }
    }

    /// Lower-case name, as used in config keys, the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Blue => "blue",
            Side::Green => "green",
        }
    }

    /// Index into two-element arrays.
    pub fn index(self) -> usize {
        match self {
            Side::Blue => 0,
            Side::Green => 1,
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a string that names neither side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown side {0:?}: expected \"blue\" or \"green\"")]
pub struct UnknownSide(pub String);

impl FromStr for Side {
    type Err = UnknownSide;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "blue" => Ok(Side::Blue),
            "green" => Ok(Side::Green),
            other => Err(UnknownSide(other.to_string())),
        }
    }
}

/// A value for each side. Indexing by [`Side`] keeps code free of `match`es.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Sides<T> {
    pub blue: T,
    pub green: T,
}

impl<T> Sides<T> {
    /// Builds both values from a function of the side.
    pub fn from_fn(mut f: impl FnMut(Side) -> T) -> Self {
        Sides {
            blue: f(Side::Blue),
            green: f(Side::Green),
        }
    }

    /// Maps both values.
    pub fn map<U>(&self, mut f: impl FnMut(Side, &T) -> U) -> Sides<U> {
        Sides {
            blue: f(Side::Blue, &self.blue),
            green: f(Side::Green, &self.green),
        }
    }
}

impl<T> std::ops::Index<Side> for Sides<T> {
    type Output = T;
    fn index(&self, side: Side) -> &T {
        match side {
            Side::Blue => &self.blue,
            Side::Green => &self.green,
        }
    }
}

impl<T> std::ops::IndexMut<Side> for Sides<T> {
    fn index_mut(&mut self, side: Side) -> &mut T {
        match side {
            Side::Blue => &mut self.blue,
            Side::Green => &mut self.green,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_side_flips_and_parses() {
        assert_eq!(Side::Blue.other(), Side::Green);
        assert_eq!(Side::Green.other().other(), Side::Green);
        assert_eq!("green".parse::<Side>(), Ok(Side::Green));
        let err = "purple".parse::<Side>().unwrap_err();
        assert!(err.to_string().contains("purple"));
    }

    #[test]
    fn sides_index_by_side() {
        let mut s = Sides::from_fn(|side| side.as_str().len());
        assert_eq!(s[Side::Blue], 4);
        s[Side::Green] = 1;
        assert_eq!(s.green, 1);
    }
}
