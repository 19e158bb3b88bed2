//! Values many flows share, each stored once: the segments of flows' paths, and the places
//! their packets were last seen.

use std::hash::Hash;

use rustc_hash::FxHashMap as HashMap;

use super::{Direction, HopLabel};

/// A direction and two consecutive places on a packet's path.
pub type Segment = (Direction, HopLabel, HopLabel);

/// The segments of flows' paths, by id.
pub(super) type Segments = Interned<Segment>;

/// The places flows' packets were last seen, by id.
pub(super) type Places = Interned<HopLabel>;

/// Values stored once, by id, with the number of users of each; an id is reused once no user
/// is left (interfaces and namespaces come and go).
#[derive(Debug)]
pub(super) struct Interned<T> {
    all: Vec<(T, u32)>,
    ids: HashMap<T, u32>,
    free: Vec<u32>,
}

impl<T> Default for Interned<T> {
    fn default() -> Self {
        Interned {
            all: Vec::new(),
            ids: HashMap::default(),
            free: Vec::new(),
        }
    }
}

impl<T: Copy + Eq + Hash> Interned<T> {
    /// The id of `value`, counting one more user.
    pub(super) fn intern(&mut self, value: T) -> u32 {
        if let Some(&id) = self.ids.get(&value) {
            self.all[id as usize].1 += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.all[id as usize] = (value, 1);
                id
            }
            None => {
                self.all.push((value, 1));
                u32::try_from(self.all.len() - 1).expect("fewer than 2^32 interned values")
            }
        };
        self.ids.insert(value, id);
        id
    }

    pub(super) fn get(&self, id: u32) -> &T {
        &self.all[id as usize].0
    }

    /// One user fewer; the id is free once none is left.
    pub(super) fn release(&mut self, id: u32) {
        let (value, users) = &mut self.all[id as usize];
        *users -= 1;
        if *users == 0 {
            self.ids.remove(value);
            self.free.push(id);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }
}
