//! Loss under load: UDP datagrams from a container to the remote at increasing rates, every
//! one matching the filter and crossing every hook (TC included), with the default ring size;
//! the highest rate with no lost event is what tracer follows in full.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tracer_tests::{
    testbed::{SERVER_ADDR, Testbed},
    tracer::Tracer,
    traffic,
};

use super::tools::lost_from;

const PORT: u16 = 10095;

pub struct Results {
    /// (offered pps, achieved pps, events lost)
    rates: Vec<(u64, f64, u64)>,
}

pub fn run(quick: bool) -> anyhow::Result<Results> {
    let rates: &[u64] = if quick {
        &[5_000]
    } else {
        &[5_000, 10_000, 20_000, 40_000, 80_000, 160_000]
    };
    let seconds = if quick { 0.5 } else { 3.0 };
    let testbed = Testbed::up(1)?;
    let ctr = &testbed.containers[0];
    let server = SocketAddr::from((SERVER_ADDR, PORT));
    let receiver = traffic::udp_bind(&testbed.remote, server)?;
    receiver.set_nonblocking(true)?;
    let sender = traffic::udp_bind(&ctr.netns, SocketAddr::from((ctr.addr, 0)))?;
    sender.send_to(b"warm-up", server)?;
    let mut results = Vec::new();
    for &rate in rates {
        let tracer = Tracer::start_with_stdout(
            &["--port", &PORT.to_string(), "--output", "json"],
            Stdio::null(),
        )?;
        let start = Instant::now();
        let mut sent = 0u64;
        let mut drain = [0u8; 64];
        while start.elapsed().as_secs_f64() < seconds {
            // Keep up with the offered rate in 1 ms steps.
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            while sent < due {
                sender.send_to(&[0u8; 32], server)?;
                sent += 1;
            }
            while receiver.recv(&mut drain).is_ok() {}
            std::thread::sleep(Duration::from_millis(1));
        }
        let achieved = sent as f64 / start.elapsed().as_secs_f64();
        let lost = lost_from(&tracer.stop()?.stderr);
        results.push((rate, achieved, lost));
    }
    Ok(Results { rates: results })
}

impl Results {
    fn max_without_loss(&self) -> Option<f64> {
        self.rates
            .iter()
            .filter(|(_, _, lost)| *lost == 0)
            .map(|(_, achieved, _)| *achieved)
            .reduce(f64::max)
    }

    pub fn markdown(&self) -> String {
        let mut md = String::from(
            "## Loss under load\n\nUDP from a container to the remote, every datagram matching, all hooks (tracepoints and TC), default 4 MiB ring.\n\n| Offered pps | Achieved pps | Events lost |\n|---|---|---|\n",
        );
        for (offered, achieved, lost) in &self.rates {
            let _ = writeln!(md, "| {offered} | {achieved:.0} | {lost} |");
        }
        let _ = writeln!(
            md,
            "\nHighest rate with no lost event: {}.\n",
            self.max_without_loss()
                .map_or("none of those tried".to_owned(), |pps| format!(
                    "{pps:.0} packets/s"
                ))
        );
        md
    }

    pub fn json(&self) -> Value {
        json!({
            "rates": self.rates.iter().map(|(o, a, l)| json!({"offered_pps": o, "achieved_pps": a, "lost": l})).collect::<Vec<_>>(),
            "max_pps_without_loss": self.max_without_loss(),
        })
    }
}
