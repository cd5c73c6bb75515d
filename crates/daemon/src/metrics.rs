//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4). Per VM its state (one
//! series per state, 1 for the current one), and from a running VMM's `stats` its vCPU seconds,
//! guest RAM, RSS, console bytes, and every counter as `vireo_vm_counter{vm, name}` (device
//! counters as `vireo_vm_device_counter{vm, device, kind, name}`), so a new VMM counter needs no
//! daemon change.

use std::fmt::Write;

use serde_json::Value;

use crate::capacity::{HostInfo, Usage};
use crate::state::VmState;

/// What one VM contributes.
pub struct VmMetrics<'a> {
    pub name: &'a str,
    pub state: VmState,
    /// The VMM's `stats` object, when it answered.
    pub stats: Option<&'a Value>,
}

/// Escapes a label value: backslash, double quote and newline.
pub fn label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn num(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub fn render(host: &HostInfo, used: &Usage, vms: &[VmMetrics]) -> String {
    let mut o = String::new();
    family(&mut o, "vireo_host_cpus", "gauge", "Host CPUs.");
    let _ = writeln!(o, "vireo_host_cpus {}", host.cpus);
    family(&mut o, "vireo_host_memory_bytes", "gauge", "Host RAM.");
    let _ = writeln!(o, "vireo_host_memory_bytes {}", host.memory_bytes);
    family(
        &mut o,
        "vireo_allocated_vcpus",
        "gauge",
        "vCPUs of running VMs.",
    );
    let _ = writeln!(o, "vireo_allocated_vcpus {}", used.vcpus);
    family(
        &mut o,
        "vireo_allocated_memory_bytes",
        "gauge",
        "Guest RAM of running VMs.",
    );
    let _ = writeln!(o, "vireo_allocated_memory_bytes {}", used.memory_bytes);

    family(
        &mut o,
        "vireo_vm_state",
        "gauge",
        "1 for the VM's current state.",
    );
    for vm in vms {
        for s in VmState::ALL {
            let _ = writeln!(
                o,
                "vireo_vm_state{{vm=\"{}\",state=\"{s}\"}} {}",
                label(vm.name),
                u8::from(s == vm.state)
            );
        }
    }
    let gauges = [
        (
            "vcpu_seconds",
            "vireo_vm_vcpu_seconds_total",
            "counter",
            "CPU time of the VMM process.",
        ),
        (
            "guest_ram_bytes",
            "vireo_vm_guest_ram_bytes",
            "gauge",
            "Guest RAM.",
        ),
        (
            "vmm_rss_bytes",
            "vireo_vm_vmm_rss_bytes",
            "gauge",
            "Resident memory of the VMM process.",
        ),
        ("vcpus", "vireo_vm_vcpus", "gauge", "vCPUs."),
        (
            "uptime_seconds",
            "vireo_vm_uptime_seconds",
            "gauge",
            "Seconds since the VM started.",
        ),
        (
            "console_bytes",
            "vireo_vm_console_bytes_total",
            "counter",
            "Console output bytes.",
        ),
        (
            "console_dropped_bytes",
            "vireo_vm_console_dropped_bytes_total",
            "counter",
            "Console output bytes dropped.",
        ),
    ];
    for (key, metric, kind, help) in gauges {
        family(&mut o, metric, kind, help);
        for vm in vms {
            if let Some(v) = vm.stats.and_then(|s| s.get(key)).and_then(num) {
                let _ = writeln!(o, "{metric}{{vm=\"{}\"}} {v}", label(vm.name));
            }
        }
    }
    family(
        &mut o,
        "vireo_vm_counter",
        "counter",
        "The VMM's accelerator counters, by name.",
    );
    for vm in vms {
        let Some(Value::Object(c)) = vm.stats.and_then(|s| s.get("counters")) else {
            continue;
        };
        for (name, v) in c {
            if let Some(v) = num(v) {
                let _ = writeln!(
                    o,
                    "vireo_vm_counter{{vm=\"{}\",name=\"{}\"}} {v}",
                    label(vm.name),
                    label(name)
                );
            }
        }
    }
    family(
        &mut o,
        "vireo_vm_device_counter",
        "counter",
        "The VMM's device counters.",
    );
    for vm in vms {
        let Some(Value::Array(devs)) = vm.stats.and_then(|s| s.get("devices")) else {
            continue;
        };
        for d in devs {
            let (Some(id), Some(Value::Object(c))) = (d["id"].as_str(), d.get("counters")) else {
                continue;
            };
            let kind = d["kind"].as_str().unwrap_or("");
            for (name, v) in c {
                if let Some(v) = num(v) {
                    let _ = writeln!(
                        o,
                        "vireo_vm_device_counter{{vm=\"{}\",device=\"{}\",kind=\"{}\",name=\"{}\"}} {v}",
                        label(vm.name),
                        label(id),
                        label(kind),
                        label(name)
                    );
                }
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn format() {
        let stats = json!({
            "accel": "emu", "vcpus": 2, "guest_ram_bytes": 536870912u64, "vmm_rss_bytes": 1000,
            "vcpu_seconds": 1.5, "uptime_seconds": 3.0, "console_bytes": 10,
            "console_dropped_bytes": 0,
            "counters": {"traps.ecall_s": 123, "instructions": 99},
            "devices": [{"kind": "block", "id": "disk0", "counters": {"read_bytes": 4096}}]
        });
        let text = render(
            &HostInfo {
                cpus: 2,
                memory_bytes: 1 << 30,
            },
            &Usage {
                vms: 1,
                vcpus: 2,
                memory_bytes: 1 << 29,
            },
            &[
                VmMetrics {
                    name: "a",
                    state: VmState::Running,
                    stats: Some(&stats),
                },
                VmMetrics {
                    name: "b",
                    state: VmState::Defined,
                    stats: None,
                },
            ],
        );
        for line in [
            "vireo_host_cpus 2",
            "vireo_vm_state{vm=\"a\",state=\"running\"} 1",
            "vireo_vm_state{vm=\"a\",state=\"paused\"} 0",
            "vireo_vm_state{vm=\"b\",state=\"defined\"} 1",
            "vireo_vm_vcpu_seconds_total{vm=\"a\"} 1.5",
            "vireo_vm_guest_ram_bytes{vm=\"a\"} 536870912",
            "vireo_vm_vmm_rss_bytes{vm=\"a\"} 1000",
            "vireo_vm_counter{vm=\"a\",name=\"traps.ecall_s\"} 123",
            "vireo_vm_counter{vm=\"a\",name=\"instructions\"} 99",
            "vireo_vm_device_counter{vm=\"a\",device=\"disk0\",kind=\"block\",name=\"read_bytes\"} 4096",
            "# TYPE vireo_vm_counter counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("vireo_vm_guest_ram_bytes{vm=\"b\"}"));
        // Every sample line is NAME{labels} VALUE or NAME VALUE.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = l.rsplit_once(' ').unwrap();
            v.parse::<f64>().unwrap_or_else(|_| panic!("{l}"));
        }
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
