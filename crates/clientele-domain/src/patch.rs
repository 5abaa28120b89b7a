//! A field of a partial write: absent (leave unchanged), `null` (clear) or a value (set).

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Debug, Default, PartialEq)]
pub enum Patch<T> {
    /// The field was not in the body: keep what is stored (on create: the default).
    #[default]
    Absent,
    /// The field was `null`: clear it (reset to the default).
    Null,
    /// The field was given a value.
    Value(T),
}

impl<T> Patch<T> {
    pub fn is_absent(&self) -> bool {
        matches!(self, Patch::Absent)
    }

    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Patch<U> {
        match self {
            Patch::Absent => Patch::Absent,
            Patch::Null => Patch::Null,
            Patch::Value(v) => Patch::Value(f(v)),
        }
    }

    /// The value when given, `None` when absent or null.
    pub fn value(&self) -> Option<&T> {
        match self {
            Patch::Value(v) => Some(v),
            _ => None,
        }
    }

    /// Applies the patch to a nullable stored field.
    pub fn apply_to(self, current: Option<T>) -> Option<T> {
        match self {
            Patch::Absent => current,
            Patch::Null => None,
            Patch::Value(v) => Some(v),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    /// Only called when the field is present (absent fields take `Default`, via `#[serde(default)]`).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<T>::deserialize(d).map(|v| v.map_or(Patch::Null, Patch::Value))
    }
}

impl<T: Serialize> Serialize for Patch<T> {
    /// Absent fields are skipped by the containers (`skip_serializing_if = "Patch::is_absent"`).
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Body {
        #[serde(default)]
        field: Patch<String>,
    }

    #[test]
    fn tells_absent_null_and_value_apart() {
        let absent: Body = serde_json::from_str("{}").unwrap_or_else(|e| panic!("{e}"));
        let null: Body =
            serde_json::from_str(r#"{"field":null}"#).unwrap_or_else(|e| panic!("{e}"));
        let value: Body =
            serde_json::from_str(r#"{"field":"x"}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(absent.field, Patch::Absent);
        assert_eq!(null.field, Patch::Null);
        assert_eq!(value.field, Patch::Value("x".to_owned()));
        assert_eq!(Patch::Absent.apply_to(Some(1)), Some(1));
        assert_eq!(Patch::<i32>::Null.apply_to(Some(1)), None);
        assert_eq!(Patch::Value(2).apply_to(Some(1)), Some(2));
    }
}
