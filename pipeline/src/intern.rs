//! Values many open views hold equal copies of — a client's enrichment, the dimension values their
//! windows are keyed by — shared as one `Arc` each instead of one copy per view. Bounded: [`Interner::prune`]
//! (after every commit) forgets the values no view or window holds any more, so an interner never holds
//! more values than the state it serves.

use std::hash::Hash;
use std::sync::Arc;

use crate::FastSet;

#[derive(Debug)]
pub(crate) struct Interner<T: ?Sized> {
    values: FastSet<Arc<T>>,
}

impl<T: ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Interner { values: FastSet::default() }
    }
}

impl<T: ?Sized + Hash + Eq> Interner<T> {
    /// The shared copy of `value` (a copy of it becomes the shared one when there is none).
    pub(crate) fn shared(&mut self, value: &T) -> Arc<T>
    where
        T: Clone,
    {
        if let Some(shared) = self.values.get(value) {
            return shared.clone();
        }
        let shared = Arc::new(value.clone());
        self.values.insert(shared.clone());
        shared
    }

    /// Replaces `value` by the shared copy of what it holds (making it the shared copy if there is none).
    pub(crate) fn share(&mut self, value: &mut Arc<T>) {
        match self.values.get(&**value) {
            Some(shared) if Arc::ptr_eq(shared, value) => {}
            Some(shared) => *value = shared.clone(),
            None => {
                self.values.insert(value.clone());
            }
        }
    }

    /// Forgets the values only the interner still holds.
    pub(crate) fn prune(&mut self) {
        self.values.retain(|v| Arc::strong_count(v) > 1);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_copy_until_none_holds_it() {
        let mut i: Interner<[String]> = Interner::default();
        let de = || -> Arc<[String]> { Arc::from(vec!["de".to_owned()]) };
        let (mut a, mut b) = (de(), de());
        i.share(&mut a);
        i.share(&mut b);
        assert!(Arc::ptr_eq(&a, &b), "the first copy is the shared one");
        let mut c = a.clone();
        i.share(&mut c);
        assert!(Arc::ptr_eq(&a, &c), "the shared copy stays");
        let mut d: Arc<[String]> = Arc::from(vec!["fr".to_owned()]);
        i.share(&mut d);
        assert_eq!(i.len(), 2);
        drop((a, b, c));
        i.prune();
        assert_eq!(i.len(), 1, "a value nobody holds is forgotten; one still held is kept");
        drop(d);
        i.prune();
        assert_eq!(i.len(), 0);
    }
}
