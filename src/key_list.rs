//! A short, non-empty list of keys or secrets: what lets one be rotated
//! without a gap. An endpoint signs each delivery with every secret of its
//! list; an account accepts a notice that any one of its keys verifies.

/// The most keys one list may hold.
///
/// A rotation needs two (the new key and the old one); two more leave room
/// for a rotation that overlaps another. Every extra key costs one more
/// verification (an RSA check or an HMAC) for each forged or broken notice,
/// since a notice is refused only after every key has failed, and one more
/// signature on every delivery: the cost of a request must stay bounded
/// whatever the config says.
pub const MAX_KEYS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyListError {
    #[error("must list at least one")]
    Empty,
    #[error(
        "lists {given}; at most {MAX_KEYS} are allowed (a rotation needs two, and each extra \
         one is another check for every forged request)"
    )]
    TooMany { given: usize },
}

/// One to [`MAX_KEYS`] items, in the configured order. The first is kept on
/// its own, so that [`KeyList::first`] cannot fail.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyList<T> {
    first: T,
    rest: Vec<T>,
}

impl<T> KeyList<T> {
    pub fn new(items: Vec<T>) -> Result<Self, KeyListError> {
        if items.len() > MAX_KEYS {
            return Err(KeyListError::TooMany { given: items.len() });
        }
        let mut items = items.into_iter();
        let first = items.next().ok_or(KeyListError::Empty)?;
        Ok(Self {
            first,
            rest: items.collect(),
        })
    }

    /// A list of one: the usual case, a key that is not being rotated.
    pub fn one(item: T) -> Self {
        Self {
            first: item,
            rest: Vec::new(),
        }
    }

    /// The first item: the one that signs where only one signature fits
    /// (`X-Signature`, sample callbacks).
    pub fn first(&self) -> &T {
        &self.first
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        std::iter::once(&self.first).chain(self.rest.iter())
    }

    #[allow(clippy::len_without_is_empty)] // never empty
    pub fn len(&self) -> usize {
        1 + self.rest.len()
    }

    /// The list with `f` applied to each item, in the same order.
    pub fn try_map<U, E>(&self, mut f: impl FnMut(&T) -> Result<U, E>) -> Result<KeyList<U>, E> {
        Ok(KeyList {
            first: f(&self.first)?,
            rest: self.rest.iter().map(f).collect::<Result<_, _>>()?,
        })
    }

    pub fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> KeyList<U> {
        KeyList {
            first: f(&self.first),
            rest: self.rest.iter().map(f).collect(),
        }
    }

    /// Whether any one key verifies: `verify` is called for each in turn
    /// until one does. A forged request is tried against every key, at most
    /// [`MAX_KEYS`]; stopping at a match tells its timing only to whoever
    /// already holds a valid signature.
    pub fn any_verifies(&self, verify: impl FnMut(&T) -> bool) -> bool {
        self.iter().any(verify)
    }
}

impl<T> From<T> for KeyList<T> {
    fn from(item: T) -> Self {
        Self::one(item)
    }
}

/// The items' own `Debug`: a `Secret` hides itself, an RSA key shows its size.
impl<T: std::fmt::Debug> std::fmt::Debug for KeyList<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_to_max_items_in_order() {
        assert_eq!(KeyList::<u8>::new(vec![]), Err(KeyListError::Empty));
        let list = KeyList::new(vec![1, 2, 3, 4]).unwrap();
        assert_eq!(list.iter().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!((list.len(), *list.first()), (4, 1));
        assert_eq!(
            KeyList::new(vec![0; MAX_KEYS + 1]),
            Err(KeyListError::TooMany { given: MAX_KEYS + 1 })
        );
        assert_eq!(KeyList::one(7), KeyList::new(vec![7]).unwrap());
        assert_eq!(
            list.map(|n| n * 10).iter().copied().collect::<Vec<_>>(),
            [10, 20, 30, 40]
        );
        assert_eq!(list.try_map(|n| if *n < 3 { Ok(*n) } else { Err(*n) }), Err(3));
    }

    #[test]
    fn any_verifies_tries_each_until_one_does() {
        let list = KeyList::new(vec!["old", "new"]).unwrap();
        let mut tried = Vec::new();
        assert!(list.any_verifies(|k| {
            tried.push(*k);
            *k == "new"
        }));
        assert_eq!(tried, ["old", "new"]);
        let mut tried = 0;
        assert!(!list.any_verifies(|_| {
            tried += 1;
            false
        }));
        assert_eq!(tried, 2, "a forgery is tried against every key");
    }
}
