//! `cargo xtask testbed up|down`: the namespaced Docker-like testbed, kept for manual use.

use clap::Subcommand;
use tracer_tests::testbed::{self, Testbed};

use crate::util::require_root;

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Create a testbed and leave it running; prints the namespace names.
    Up {
        /// Container namespaces to create.
        #[arg(long, default_value_t = 2)]
        containers: usize,
    },
    /// Remove testbeds: those created by `up` and those left by killed tests.
    Down,
}

pub fn run(action: Action) -> anyhow::Result<()> {
    require_root("the testbed")?;
    match action {
        Action::Up { containers } => {
            // A fixed id, so `up` twice fails loudly instead of making a second testbed.
            let testbed = Testbed::up_with_id("manual", containers)?;
            for name in testbed.keep() {
                println!("{name}");
            }
            eprintln!(
                "xtask: testbed up; try `ip netns exec {}manual-ctr1 ping 198.19.0.252`",
                testbed::PREFIX
            );
        }
        Action::Down => {
            for name in testbed::remove_leftovers(true)? {
                println!("removed {name}");
            }
        }
    }
    Ok(())
}
