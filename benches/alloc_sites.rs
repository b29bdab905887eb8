//! Where the allocations of `benches/alloc.rs` come from: the same workload,
//! with dhat's heap profiler running for exactly the measured window (it
//! sees every thread, so it is also the cross-check for `alloc`, which counts
//! the server thread only).
//!
//! ```text
//! cargo bench --bench alloc_sites                 # every scenario, a fifth of alloc's messages
//! cargo bench --bench alloc_sites -- echo         # some: echo, pipe16, bcast
//! ALLOC_SCALE=1 cargo bench --bench alloc_sites   # as many messages as alloc
//! ALLOC_SITES_FRAMES=12 cargo bench --bench alloc_sites   # longer stacks
//! ```
//!
//! For each scenario it prints the window's totals (all threads) per message
//! and the allocation sites above 0.01 allocations per message, most frequent
//! first, each with its stack (standard-library frames after the first one
//! left out). The full profiles are written to
//! `target/alloc-sites/<scenario>.json` (DHAT's format: open them with DHAT's
//! `dh_view.html` from Valgrind). Exits 1 if a scenario does not complete.

#[path = "support/workload.rs"]
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::Value;
use workload::Scenario;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// Sites below this many allocations per message are not listed.
const MIN_PER_MSG: f64 = 0.01;
/// At most this many sites per scenario.
const MAX_SITES: usize = 15;

fn main() -> ExitCode {
    let scale = std::env::var("ALLOC_SCALE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(0.2);
    let frames = std::env::var("ALLOC_SITES_FRAMES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(8);
    let scenarios = match Scenario::select(Scenario::standard(scale)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("alloc_sites: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = target_dir().join("alloc-sites");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("alloc_sites: {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }

    let mut failed = false;
    for scenario in scenarios {
        let file = dir.join(format!("{}.json", scenario.name));
        let profile = file.clone();
        let outcome = workload::run(scenario, move |window: &mut dyn FnMut()| {
            let profiler = dhat::Profiler::builder()
                .file_name(&profile)
                .trim_backtraces(Some(32))
                .build();
            window();
            let stats = dhat::HeapStats::get();
            drop(profiler); // writes the profile
            stats
        });
        let o = match outcome {
            Ok(o) => o,
            Err(e) => {
                println!("\n## {}: FAILED: {e}", scenario.label);
                failed = true;
                continue;
            }
        };
        let msgs = o.messages as f64;
        println!(
            "\n## {} ({} msgs{} in {:.2} s): {:.3} allocations and {:.1} bytes per message, all threads",
            scenario.label,
            o.messages,
            if scenario.fan_out() > 1 {
                format!(", {} deliveries", o.deliveries)
            } else {
                String::new()
            },
            o.window.as_secs_f64(),
            o.measurement.total_blocks as f64 / msgs,
            o.measurement.total_bytes as f64 / msgs,
        );
        // The clients leave without a close handshake, so their sessions
        // count as aborted; only a forced one says the server got stuck.
        if o.drain.forced + o.drain.tasks_forced > 0 {
            eprintln!(
                "alloc_sites: {}: drain after the bench: {}",
                scenario.name, o.drain
            );
        }
        match sites(&file, msgs, frames) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                println!("cannot read the profile {}: {e}", file.display());
                failed = true;
            }
        }
        println!("(profile: {})", file.display());
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The sites of a DHAT profile with at least [`MIN_PER_MSG`] allocations per
/// message, most frequent first, with up to `frames` frames each.
fn sites(file: &PathBuf, msgs: f64, frames: usize) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let json: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let ftbl: Vec<&str> = json["ftbl"]
        .as_array()
        .ok_or("no ftbl")?
        .iter()
        .map(|f| f.as_str().unwrap_or("?"))
        .collect();
    let mut pps: Vec<(u64, u64, Vec<usize>)> = json["pps"]
        .as_array()
        .ok_or("no pps")?
        .iter()
        .map(|pp| {
            let fs = pp["fs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i.as_u64().map(|i| i as usize))
                        .collect()
                })
                .unwrap_or_default();
            (
                pp["tbk"].as_u64().unwrap_or(0),
                pp["tb"].as_u64().unwrap_or(0),
                fs,
            )
        })
        .collect();
    pps.sort_by_key(|pp| std::cmp::Reverse(pp.0));
    let mut out = String::new();
    let mut shown = 0;
    let mut rest = (0u64, 0u64);
    for (blocks, bytes, fs) in &pps {
        if (*blocks as f64) < msgs * MIN_PER_MSG || shown == MAX_SITES {
            rest.0 += blocks;
            rest.1 += bytes;
            continue;
        }
        shown += 1;
        out.push_str(&format!(
            "{:>7.3} allocs/msg {:>7.1} B/msg  ({blocks} allocations)\n",
            *blocks as f64 / msgs,
            *bytes as f64 / msgs
        ));
        let stack: Vec<&str> = fs
            .iter()
            .map(|&i| ftbl.get(i).copied().unwrap_or("?"))
            .collect();
        for frame in interesting(&stack, frames) {
            out.push_str(&format!("        {frame}\n"));
        }
    }
    out.push_str(&format!(
        "{:>7.3} allocs/msg {:>7.1} B/msg  in {} other sites\n",
        rest.0 as f64 / msgs,
        rest.1 as f64 / msgs,
        pps.len() - shown
    ));
    Ok(out)
}

/// The first frame of `stack` (what allocated), then the frames outside the
/// standard library (where), at most `max`, without their addresses.
fn interesting<'a>(stack: &[&'a str], max: usize) -> Vec<&'a str> {
    let strip = |f: &'a str| f.split_once(": ").map_or(f, |(_, rest)| rest);
    let is_std = |f: &str| {
        [
            "alloc::", "core::", "std::", "<alloc::", "<core::", "<std::",
        ]
        .iter()
        .any(|p| f.starts_with(p))
    };
    let mut out = Vec::new();
    for (i, frame) in stack.iter().map(|f| strip(f)).enumerate() {
        if out.len() == max {
            break;
        }
        if i == 0 || !is_std(frame) {
            out.push(frame);
        }
    }
    out
}

/// Cargo's target directory (where the profiles go).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}
