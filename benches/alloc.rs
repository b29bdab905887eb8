//! Allocations per message on the echo and broadcast paths.
//!
//! The claim under test: beyond the payload of each received message (one
//! allocation, which the recipients' queues then share), wsgate allocates
//! nothing per message. A wsgate `Context` serves `/echo` and `/broadcast`
//! on an executor that one dedicated server thread runs; blocking clients on
//! another thread send pre-encoded masked frames (see
//! `benches/support/workload.rs`). `allocation-counter`, installed as the
//! global allocator by linking it, counts per thread: only the server
//! thread's allocations during the measured window are counted.
//!
//! ```text
//! cargo bench --bench alloc                  # every scenario
//! cargo bench --bench alloc -- echo bcast    # some: echo, pipe16, bcast, idle
//! ALLOC_SCALE=0.1 cargo bench --bench alloc  # a tenth of the messages
//! ALLOC_MAX_OVER_FLOOR=0 cargo bench --bench alloc   # fail (exit 2) above the floor
//! ```
//!
//! The `idle` scenario opens 2,000 connections inside the window and
//! leaves them idle: the heap the server thread still holds for them at
//! the window's end, per connection (its own table; 4,000 descriptors
//! between the clients and the server, so `ulimit -n` must allow them).
//!
//! It prints one table row per scenario: allocations and bytes per received
//! message (per published message for broadcast) next to the floor (one
//! allocation of 32 bytes: the payload), and per delivery for broadcast.
//! Where the allocations above the floor come from: `cargo bench --bench
//! alloc_sites` (a dhat heap profile of the same window, top sites).
//! Exits 1 if a scenario does not complete (every phase has a deadline).
//!
//! Caveat: a waker fired on another thread (async-io's reactor thread, when
//! the server thread is busy) allocates there, if at all, and is not counted;
//! `alloc_sites`, which sees every thread, gives the cross-check.

#[path = "support/workload.rs"]
mod workload;

use std::process::ExitCode;

use allocation_counter::AllocationInfo;
use workload::{PAYLOAD, Scenario};

fn main() -> ExitCode {
    let scale = match std::env::var("ALLOC_SCALE").map(|v| v.parse::<f64>()) {
        Err(_) => 1.0,
        Ok(Ok(s)) if s > 0.0 => s,
        Ok(_) => {
            eprintln!("alloc: ALLOC_SCALE must be a positive number");
            return ExitCode::FAILURE;
        }
    };
    let max_over = std::env::var("ALLOC_MAX_OVER_FLOOR")
        .ok()
        .and_then(|v| v.parse::<f64>().ok());
    let scenarios = match Scenario::select(Scenario::standard(scale)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("alloc: {e}");
            return ExitCode::FAILURE;
        }
    };

    // The allocator must be ours, or every count reads zero and proves nothing.
    let probe = allocation_counter::measure(|| {
        std::hint::black_box(Box::new(0u64));
    });
    if probe.count_total != 1 {
        eprintln!("alloc: allocation-counter is not the global allocator (probe: {probe:?})");
        return ExitCode::FAILURE;
    }

    println!("wsgate: allocations on the server thread during the measured window");
    println!(
        "({PAYLOAD}-byte binary messages; floor: 1 allocation of {PAYLOAD} bytes per received message)\n"
    );
    println!(
        "| scenario | measured | allocs/msg | bytes/msg | allocs/delivery | bytes/delivery | floor/msg | live after | msgs/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut failed = false;
    let mut over = Vec::new();
    let mut idle_rows = Vec::new();
    for scenario in scenarios {
        let outcome = workload::run(scenario, |window: &mut dyn FnMut()| {
            allocation_counter::measure(window)
        });
        let o = match outcome {
            Ok(o) => o,
            Err(e) => {
                println!("| {} | FAILED: {e} | | | | | | | |", scenario.label);
                failed = true;
                continue;
            }
        };
        let info: AllocationInfo = o.measurement;
        if scenario.is_idle() {
            // Held at the window's end by what the window allocated: the
            // connections' cost (the warm-up paid for one-time growth).
            let n = o.messages as f64;
            idle_rows.push(format!(
                "| {} | {} conns | {:.2} | {:.0} | {:.1} | {:.0} | {:.0} |",
                scenario.label,
                o.messages,
                info.count_current as f64 / n,
                info.bytes_current as f64 / n,
                info.count_total as f64 / n,
                info.bytes_total as f64 / n,
                n / o.window.as_secs_f64()
            ));
            continue;
        }
        let msgs = o.messages as f64;
        let per_msg = info.count_total as f64 / msgs;
        let bytes_per_msg = info.bytes_total as f64 / msgs;
        let (per_delivery, bytes_per_delivery) = if scenario.fan_out() > 1 {
            let d = o.deliveries as f64;
            (
                format!("{:.3}", info.count_total as f64 / d),
                format!("{:.1}", info.bytes_total as f64 / d),
            )
        } else {
            ("-".to_owned(), "-".to_owned())
        };
        let measured = if scenario.fan_out() > 1 {
            format!("{} msgs, {} deliveries", o.messages, o.deliveries)
        } else {
            format!("{} msgs", o.messages)
        };
        println!(
            "| {} | {measured} | {per_msg:.3} | {bytes_per_msg:.1} | {per_delivery} | {bytes_per_delivery} | 1 / {PAYLOAD} B | {:+} allocs, {:+} B | {:.0} |",
            scenario.label,
            info.count_current,
            info.bytes_current,
            msgs / o.window.as_secs_f64()
        );
        // The clients leave without a close handshake, so their sessions
        // count as aborted; only a forced one says the server got stuck.
        if o.drain.forced + o.drain.tasks_forced > 0 {
            eprintln!(
                "alloc: {}: drain after the bench: {}",
                scenario.name, o.drain
            );
        }
        if let Some(max) = max_over
            && per_msg > 1.0 + max
        {
            over.push(format!(
                "{}: {per_msg:.3} allocations per message (floor 1, allowed {:.3})",
                scenario.name,
                1.0 + max
            ));
        }
    }
    println!(
        "\nallocs/msg and bytes/msg: per message received by the server (round trip for echo, \
         published message for broadcast);\nper delivery: per message sent to a subscriber; \
         live after: allocations of the window still held at its end (negative: it freed older ones).\n\
         Below the floor is possible: the decoder hands payloads out as slices of the read buffer, \
         so a payload costs\na share of the buffer's refills (at most one per read). \
         Where the rest comes from: cargo bench --bench alloc_sites"
    );
    if !idle_rows.is_empty() {
        println!(
            "\n| scenario | measured | live allocs/conn | live bytes/conn | allocs/handshake | bytes/handshake | handshakes/s |"
        );
        println!("|---|---|---|---|---|---|---|");
        for row in &idle_rows {
            println!("{row}");
        }
        println!(
            "\nlive allocs/conn and bytes/conn: what the server thread allocated while the \
             connections opened and still holds\nonce they are idle (heap only: payload bytes as \
             requested, without the allocator's own overhead or the kernel's socket buffers);\n\
             allocs/handshake and bytes/handshake: all it allocated meanwhile (freed since or not), per connection."
        );
    }
    if failed {
        return ExitCode::FAILURE;
    }
    if !over.is_empty() {
        for o in over {
            eprintln!("alloc: above the floor: {o}");
        }
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
