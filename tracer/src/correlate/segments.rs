//! The segments of flows' paths, each stored once however many flows share it.

use rustc_hash::FxHashMap as HashMap;

use super::{Direction, HopLabel};

/// A direction and two consecutive places on a packet's path.
pub type Segment = (Direction, HopLabel, HopLabel);

/// Segments many flows share, each stored once, by id, with the number of flows using it; an
/// id is reused once no flow uses its segment (interfaces and namespaces come and go).
#[derive(Debug, Default)]
pub(super) struct Segments {
    all: Vec<(Segment, u32)>,
    ids: HashMap<Segment, u32>,
    free: Vec<u32>,
}

impl Segments {
    /// The id of `segment`, counting one more user.
    pub(super) fn intern(&mut self, segment: Segment) -> u32 {
        if let Some(&id) = self.ids.get(&segment) {
            self.all[id as usize].1 += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.all[id as usize] = (segment, 1);
                id
            }
            None => {
                self.all.push((segment, 1));
                u32::try_from(self.all.len() - 1).expect("fewer than 2^32 segments")
            }
        };
        self.ids.insert(segment, id);
        id
    }

    pub(super) fn get(&self, id: u32) -> &Segment {
        &self.all[id as usize].0
    }

    /// One user fewer; the id is free once none is left.
    pub(super) fn release(&mut self, id: u32) {
        let (segment, users) = &mut self.all[id as usize];
        *users -= 1;
        if *users == 0 {
            self.ids.remove(segment);
            self.free.push(id);
        }
    }

    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }
}
