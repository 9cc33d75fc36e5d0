//! Every key the config parser knows, found by walking the raw config's
//! `Deserialize` impls with a deserializer that records each struct's
//! fields (as serde-reflection does): the list the reference
//! (`docs/reference/config.md`) is checked against. A map's keys (the
//! environments) show as `*`.

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use std::collections::BTreeSet;

/// Every key, dotted (`proxy.listen`, `deploy.bake.min_requests`,
/// `environments.*.upstreams`), tables included.
pub(crate) fn known() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    <super::RawConfig as serde::Deserialize>::deserialize(Probe {
        path: String::new(),
        keys: &mut keys,
    })
    .expect("every raw config type can be probed");
    keys
}

/// Keys that hold a table of their own, not a value.
pub(crate) fn tables(keys: &BTreeSet<String>) -> BTreeSet<String> {
    keys.iter()
        .filter(|k| {
            let prefix = format!("{k}.");
            keys.iter().any(|o| o.starts_with(&prefix))
        })
        .cloned()
        .collect()
}

struct Probe<'a> {
    path: String,
    keys: &'a mut BTreeSet<String>,
}

#[derive(Debug)]
struct Stop(String);

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: std::fmt::Display>(msg: T) -> Stop {
        Stop(msg.to_string())
    }
}

impl<'a> Probe<'a> {
    fn at(&mut self, key: &str) -> Probe<'_> {
        let path = if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        };
        self.keys.insert(path.clone());
        Probe {
            path,
            keys: self.keys,
        }
    }
}

/// The fields of a struct (or one `*` entry of a map), each probed.
struct Fields<'a, 'b> {
    probe: &'b mut Probe<'a>,
    names: Vec<&'static str>,
    next: usize,
}

impl<'de> de::MapAccess<'de> for Fields<'_, '_> {
    type Error = Stop;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        match self.names.get(self.next) {
            Some(name) => seed.deserialize((*name).into_deserializer()).map(Some),
            None => Ok(None),
        }
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        let name = self.names[self.next];
        self.next += 1;
        seed.deserialize(self.probe.at(name))
    }
}

/// One element of a list (an array of tables probes its table once).
struct One<'a, 'b> {
    probe: Option<Probe<'a>>,
    _life: std::marker::PhantomData<&'b ()>,
}

impl<'de> de::SeqAccess<'de> for One<'_, '_> {
    type Error = Stop;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Stop> {
        match self.probe.take() {
            Some(p) => seed.deserialize(p).map(Some),
            None => Ok(None),
        }
    }
}

/// The first variant of an enum, as a unit.
struct FirstVariant(&'static str);

impl<'de> de::EnumAccess<'de> for FirstVariant {
    type Error = Stop;
    type Variant = UnitOnly;
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, UnitOnly), Stop> {
        Ok((seed.deserialize(self.0.into_deserializer())?, UnitOnly))
    }
}

struct UnitOnly;

impl<'de> de::VariantAccess<'de> for UnitOnly {
    type Error = Stop;
    fn unit_variant(self) -> Result<(), Stop> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _: T) -> Result<T::Value, Stop> {
        Err(Stop("newtype variant".into()))
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, Stop> {
        Err(Stop("tuple variant".into()))
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        Err(Stop("struct variant".into()))
    }
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_map(Fields {
            probe: &mut self,
            names: fields.to_vec(),
            next: 0,
        })
    }
    fn deserialize_map<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_map(Fields {
            probe: &mut self,
            names: vec!["*"],
            next: 0,
        })
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_some(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_seq(One {
            probe: Some(self),
            _life: std::marker::PhantomData,
        })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_enum(FirstVariant(variants[0]))
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_bool(false)
    }
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_string(String::new())
    }
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_str("")
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_f64(0.0)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_f32(0.0)
    }
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_bool(false)
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_unit()
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_u64(0)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_u64(0)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_u64(0)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_u64(0)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_i64(0)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        visitor.visit_i64(0)
    }

    serde::forward_to_deserialize_any! {
        i8 i16 i128 u128 char
        bytes byte_buf unit unit_struct tuple tuple_struct identifier
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The keys `docs/reference/config.md` names in the first cell of its
    /// tables, dotted in full: a bare name after a full one takes its table
    /// (`proxy.connect_timeout` / `upstream_timeout`), a side is `*`.
    fn documented() -> BTreeSet<String> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/reference/config.md"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let mut keys = BTreeSet::new();
        for line in text.lines().filter(|l| l.starts_with("| `")) {
            let cell = line.split('|').nth(1).unwrap_or("");
            let mut table = String::new();
            for token in cell.split('`').skip(1).step_by(2) {
                let token = token.replace("blue/green", "*").replace("SIDE", "*");
                let key = if token.contains('.') {
                    token.clone()
                } else {
                    format!("{table}.{token}")
                };
                table = key
                    .rsplit_once('.')
                    .map(|(t, _)| t.to_string())
                    .unwrap_or_default();
                keys.insert(key);
            }
        }
        keys
    }

    /// Every key the parser takes is in the reference (itself, its table,
    /// or `table.*`), and every key the reference names is one the parser
    /// takes: the reference cannot fall behind the code, nor name a key
    /// that does not exist.
    #[test]
    fn the_reference_names_every_key_the_parser_takes_and_no_other() {
        let known = super::known();
        let tables = super::tables(&known);
        let docs = documented();
        let covered = |k: &str| {
            let mut at = k.to_string();
            loop {
                if docs.contains(&at) || docs.contains(&format!("{at}.*")) {
                    return true;
                }
                match at.rsplit_once('.') {
                    Some((up, _)) => at = up.to_string(),
                    None => return false,
                }
            }
        };
        let missing: Vec<&String> = known
            .iter()
            .filter(|k| !tables.contains(*k) && !covered(k))
            .collect();
        assert!(
            missing.is_empty(),
            "keys the parser takes that docs/reference/config.md does not name: {missing:#?}"
        );
        let takes = |k: &str| {
            known.contains(k)
                || k.strip_suffix(".*")
                    .is_some_and(|table| tables.contains(table))
        };
        let unknown: Vec<&String> = docs.iter().filter(|k| !takes(k)).collect();
        assert!(
            unknown.is_empty(),
            "keys docs/reference/config.md names that the parser does not take: {unknown:#?}"
        );
        assert!(
            known.len() > 150,
            "the probe found every raw type: {}",
            known.len()
        );
    }
}
