//! Values many flows share, each stored once: the segments of flows' paths, the paths
//! themselves, and the places their packets were last seen.

use std::hash::Hash;

use rustc_hash::FxHashMap as HashMap;
use smallvec::SmallVec;

use super::{Direction, HopLabel};

/// A direction and two consecutive places on a packet's path.
pub type Segment = (Direction, HopLabel, HopLabel);

/// The segments of flows' paths, by id.
type Segments = Interned<Segment>;

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

    /// One user fewer; the id is free once none is left, and its value is returned then.
    pub(super) fn release(&mut self, id: u32) -> Option<T> {
        let (value, users) = &mut self.all[id as usize];
        *users -= 1;
        if *users > 0 {
            return None;
        }
        let value = *value;
        self.ids.remove(&value);
        self.free.push(id);
        Some(value)
    }

    /// One more user of `id`.
    fn retain(&mut self, id: u32) {
        self.all[id as usize].1 += 1;
    }

    fn users(&self, id: u32) -> u32 {
        self.all[id as usize].1
    }

    pub(super) fn len(&self) -> usize {
        self.ids.len()
    }
}

/// The paths of flows, each the segments a flow's packets crossed in the order it first
/// crossed them, stored as a tree of shared prefixes: a path is its last segment after the
/// path before it. The flows of one route share one path, so a flow keeps a path id and its
/// latencies, not a list of segment ids of its own.
#[derive(Debug, Default)]
pub(super) struct Paths {
    /// (the path before, the last segment's id) by path id. A path counts as users the flows
    /// that took it and the paths that extend it, and holds a user of its segment.
    paths: Interned<(u32, u32)>,
    /// The segment ids of each path, first to last, by path id: every packet of a flow looks
    /// its segments up, and there are few paths.
    lists: Vec<SmallVec<[u32; 8]>>,
    segments: Segments,
}

impl Paths {
    /// The path with no segment.
    pub(super) const EMPTY: u32 = u32::MAX;

    /// The segment ids of `path`, first to last.
    pub(super) fn segments(&self, path: u32) -> &[u32] {
        match path {
            Self::EMPTY => &[],
            path => &self.lists[path as usize],
        }
    }

    pub(super) fn segment(&self, id: u32) -> &Segment {
        self.segments.get(id)
    }

    /// `path` followed by `segment`, counting one more user of it. The caller still holds its
    /// user of `path` (a flow releases it once it has taken the longer one).
    pub(super) fn extend(&mut self, path: u32, segment: Segment) -> u32 {
        let segment = self.segments.intern(segment);
        let extended = self.paths.intern((path, segment));
        if self.paths.users(extended) == 1 {
            // A new path: it holds its segment (the user just counted) and the path before.
            if path != Self::EMPTY {
                self.paths.retain(path);
            }
            let mut list = SmallVec::from(self.segments(path));
            list.push(segment);
            let at = extended as usize;
            if at == self.lists.len() {
                self.lists.push(list);
            } else {
                self.lists[at] = list;
            }
        } else {
            self.segments.release(segment);
        }
        extended
    }

    /// One user of `path` fewer; a path no one uses any more lets go of its segment and of
    /// the path before it.
    pub(super) fn release(&mut self, mut path: u32) {
        while path != Self::EMPTY {
            let Some((before, segment)) = self.paths.release(path) else {
                return;
            };
            self.segments.release(segment);
            path = before;
        }
    }

    /// Distinct segments in use.
    pub(super) fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Distinct paths in use, each prefix of one counting.
    pub(super) fn path_count(&self) -> usize {
        self.paths.len()
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::hook::Hook;

    use super::*;
    use crate::{correlate::Direction, decode::IfName};

    fn segment(hook: Hook) -> Segment {
        let place = |hook| HopLabel {
            hook,
            ifname: IfName::default(),
            ifindex: 1,
            netns_inode: 1,
        };
        (Direction::Original, place(Hook::NetifRx), place(hook))
    }

    /// Flows of one route share its path, a flow that goes further shares its start, and the
    /// last flow to end lets go of every path and segment.
    #[test]
    fn flows_share_paths_and_the_last_one_frees_them() {
        let mut paths = Paths::default();
        let (a, b) = (segment(Hook::NetDevQueue), segment(Hook::KfreeSkb));
        let first = paths.extend(Paths::EMPTY, a);
        let second = paths.extend(Paths::EMPTY, a);
        assert_eq!(first, second);
        let longer = paths.extend(second, b);
        paths.release(second);
        assert_eq!(
            (paths.path_count(), paths.segment_count()),
            (2, 2),
            "[a] and [a, b]"
        );
        assert_eq!(paths.segments(longer).len(), 2);
        assert_eq!(*paths.segment(paths.segments(longer)[1]), b);
        assert_eq!(paths.segments(first), &paths.segments(longer)[..1]);
        // The first flow ends: [a] is still the start of [a, b].
        paths.release(first);
        assert_eq!((paths.path_count(), paths.segment_count()), (2, 2));
        paths.release(longer);
        assert_eq!((paths.path_count(), paths.segment_count()), (0, 0));
        assert!(paths.segments(Paths::EMPTY).is_empty());
    }
}
