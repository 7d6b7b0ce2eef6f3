//! Metadata: a small string map kept as a vector sorted by key. Most
//! registrations carry a handful of pairs, and a `BTreeMap`'s first node
//! alone costs about half a kilobyte, which a million registrations feel.

use std::collections::BTreeMap;
use std::ops::Index;

/// A registration's metadata: string keys to string values, sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Metadata(Vec<(String, String)>);

impl Metadata {
    /// No pairs.
    pub fn new() -> Self {
        Metadata(Vec::new())
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&String> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    /// True when `key` has a value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key`, returning the value it replaced.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    /// How many pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs, sorted by key.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl Extend<(String, String)> for Metadata {
    fn extend<I: IntoIterator<Item = (String, String)>>(&mut self, pairs: I) {
        for (k, v) in pairs {
            self.insert(k, v);
        }
    }
}

impl FromIterator<(String, String)> for Metadata {
    /// Later pairs win over earlier ones with the same key. Sorts once, so
    /// the cost is n log n however the pairs arrive (inserting one at a
    /// time into the sorted vector would be quadratic).
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        let mut pairs: Vec<(String, String)> = pairs.into_iter().collect();
        // Stable: among equal keys the later pair stays last.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut unique: Vec<(String, String)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match unique.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => unique.push(pair),
            }
        }
        Metadata(unique)
    }
}

impl<const N: usize> From<[(String, String); N]> for Metadata {
    fn from(pairs: [(String, String); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl From<BTreeMap<String, String>> for Metadata {
    fn from(map: BTreeMap<String, String>) -> Self {
        // Already sorted and unique.
        Metadata(map.into_iter().collect())
    }
}

impl IntoIterator for Metadata {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl Index<&str> for Metadata {
    type Output = String;

    /// Panics when `key` is missing, as `BTreeMap` does.
    fn index(&self, key: &str) -> &String {
        self.get(key)
            .unwrap_or_else(|| panic!("no metadata key {key:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_sorted_map() {
        let mut m: Metadata = [
            ("b".to_string(), "2".to_string()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ]
        .into();
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [
                (&"a".to_string(), &"1".to_string()),
                (&"b".into(), &"3".into())
            ]
        );
        assert_eq!(m.insert("a".into(), "9".into()), Some("1".into()));
        assert_eq!(m["a"], "9");
        assert_eq!(m.remove("b"), Some("3".into()));
        assert_eq!((m.len(), m.get("b"), m.contains_key("a")), (1, None, true));
        let many: Metadata = (0..200_000)
            .rev()
            .map(|i| (format!("k{i:06}"), i.to_string()))
            .collect();
        assert_eq!(many.len(), 200_000, "built in n log n, not n squared");
        assert_eq!(many.iter().next().map(|(k, _)| k.as_str()), Some("k000000"));
        let from_tree: Metadata = BTreeMap::from([("x".to_string(), "y".to_string())]).into();
        assert_eq!(from_tree.get("x").map(String::as_str), Some("y"));
    }
}
