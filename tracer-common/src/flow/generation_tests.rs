//! The tracking generation under concurrency: a model of the programs' interleavings, and
//! real threads.

extern crate std;

use core::sync::atomic::{AtomicU64, Ordering};
use std::{vec, vec::Vec};

use super::advance_generation;

/// One step of a CPU in the model.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Remember connection `n` as tracked (the `TRACKED` insert).
    Track(usize),
    /// Advance the generation in one atomic add ([`advance_generation`]).
    Advance,
    /// The old way, in two steps: read the generation into this CPU's register...
    Load,
    /// ...and store the register plus one.
    StorePlusOne,
    /// Judge connection `n`: read the generation, look `n` up, and cache "does not match"
    /// with that generation when it is not tracked (`matches` in tracer-ebpf's `emit.rs`).
    Judge(usize),
}

/// Runs the CPUs' programs in the order `schedule` gives (a CPU index per step) and says
/// whether the verdict the judging CPU cached is wrongly still valid at the end: it says
/// "not tracked" for a connection that is tracked, under the current generation.
fn stale_verdict_survives(programs: &[Vec<Step>], schedule: &[usize]) -> bool {
    let generation = AtomicU64::new(1);
    let mut tracked = [false; 4];
    let mut registers = vec![0u64; programs.len()];
    let mut next = vec![0usize; programs.len()];
    let mut verdict = None;
    for &cpu in schedule {
        let step = programs[cpu][next[cpu]];
        next[cpu] += 1;
        match step {
            Step::Track(n) => tracked[n] = true,
            // SAFETY: an atomic the model owns.
            Step::Advance => unsafe { advance_generation(generation.as_ptr()) },
            Step::Load => registers[cpu] = generation.load(Ordering::Relaxed),
            Step::StorePlusOne => generation.store(registers[cpu] + 1, Ordering::Relaxed),
            Step::Judge(n) => {
                let now = generation.load(Ordering::Relaxed);
                if !tracked[n] {
                    verdict = Some((n, now));
                }
            }
        }
    }
    verdict.is_some_and(|(n, made_at)| tracked[n] && made_at == generation.load(Ordering::Relaxed))
}

/// Every order in which the CPUs' steps can interleave (each CPU's own steps in order).
fn schedules(lengths: &[usize]) -> Vec<Vec<usize>> {
    if lengths.iter().all(|&n| n == 0) {
        return vec![Vec::new()];
    }
    let mut all = Vec::new();
    for (cpu, &n) in lengths.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let mut rest = lengths.to_vec();
        rest[cpu] -= 1;
        for mut tail in schedules(&rest) {
            tail.insert(0, cpu);
            all.push(tail);
        }
    }
    all
}

/// CPUs 0, 1 and 2 each track a connection of their own, advancing the generation with
/// `advance`; CPU 3 judges connection 0. With a load and a store, CPU 2 can read the
/// generation before CPU 1 advances it and store its own advance last: the value CPU 1 left
/// comes back, erasing CPU 0's advance, and a verdict on connection 0 judged between CPU 1's
/// advance and CPU 0's tracking is valid again.
fn scenario(advance: &[Step]) -> Vec<Vec<Step>> {
    let tracking = |n| {
        let mut steps = vec![Step::Track(n)];
        steps.extend_from_slice(advance);
        steps
    };
    vec![tracking(0), tracking(1), tracking(2), vec![Step::Judge(0)]]
}

fn interleavings_with_a_stale_verdict(programs: &[Vec<Step>]) -> usize {
    let lengths: Vec<usize> = programs.iter().map(Vec::len).collect();
    schedules(&lengths)
        .iter()
        .filter(|schedule| stale_verdict_survives(programs, schedule))
        .count()
}

#[test]
fn no_interleaving_of_atomic_advances_leaves_a_stale_verdict_valid() {
    assert_eq!(
        interleavings_with_a_stale_verdict(&scenario(&[Step::Advance])),
        0
    );
}

/// What the programs did before: a load and a store. Some interleaving loses an advance, and
/// the verdict cached between the two stays valid for a connection that is tracked.
#[test]
fn a_load_and_a_store_lose_an_advance_in_some_interleaving() {
    let programs = scenario(&[Step::Load, Step::StorePlusOne]);
    assert!(interleavings_with_a_stale_verdict(&programs) > 0);
}

#[test]
fn concurrent_advances_are_all_counted() {
    let generation = AtomicU64::new(0);
    let threads = 4;
    let each = 100_000;
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                for _ in 0..each {
                    // SAFETY: an atomic the test owns.
                    unsafe { advance_generation(generation.as_ptr()) };
                }
            });
        }
    });
    assert_eq!(generation.load(Ordering::Relaxed), threads * each);
}
