//! Start-up: from starting tracer to its ready line, with 1, 10 and 100 container namespaces
//! on the bridge (topology discovery, program load, and TC attachment to every veth end).

use std::{fmt::Write as _, process::Stdio, time::Instant};

use serde_json::{Value, json};
use tracer_tests::{testbed::Testbed, tracer::Tracer};

use super::Stat;

pub struct Results {
    sizes: Vec<(usize, Stat)>,
}

pub fn run(quick: bool) -> anyhow::Result<Results> {
    let (sizes, repeats): (&[usize], usize) = if quick {
        (&[1, 10], 1)
    } else {
        (&[1, 10, 100], 3)
    };
    let mut results = Vec::new();
    for &containers in sizes {
        let _testbed = Testbed::up(containers)?;
        let mut samples = Vec::new();
        for _ in 0..repeats {
            let start = Instant::now();
            let tracer = Tracer::start_with_stdout(&["--port", "1"], Stdio::null())?;
            samples.push(start.elapsed().as_secs_f64());
            tracer.stop()?;
        }
        results.push((containers, Stat::of(&samples)));
    }
    Ok(Results { sizes: results })
}

impl Results {
    pub fn seconds_for(&self, containers: usize) -> Option<f64> {
        self.sizes
            .iter()
            .find(|(n, _)| *n == containers)
            .map(|(_, s)| s.median)
    }

    pub fn markdown(&self) -> String {
        let mut md = String::from(
            "## Start-up\n\nFrom starting tracer to `tracer: ready`, default hooks (TC on every veth end, bridge and uplink), on a machine with that many container namespaces.\n\n| Container namespaces | Seconds |\n|---|---|\n",
        );
        for (containers, stat) in &self.sizes {
            let _ = writeln!(
                md,
                "| {containers} | {:.2} [{:.2}-{:.2}] |",
                stat.median, stat.min, stat.max
            );
        }
        md.push('\n');
        md
    }

    pub fn json(&self) -> Value {
        json!(
            self.sizes
                .iter()
                .map(|(n, s)| json!({"containers": n, "seconds": s.json()}))
                .collect::<Vec<_>>()
        )
    }
}
