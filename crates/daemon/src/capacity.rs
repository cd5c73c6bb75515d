//! What the host has and what running VMs take: `start` refuses a VM that would push the sum of
//! running VMs' memory past host RAM minus a reserve, or their vCPUs past a ratio of host CPUs.

use serde::Serialize;
use utoipa::ToSchema;

/// The host's CPUs and RAM.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, ToSchema)]
pub struct HostInfo {
    pub cpus: u32,
    pub memory_bytes: u64,
}

impl HostInfo {
    /// Reads `available_parallelism` and MemTotal from /proc/meminfo.
    pub fn read() -> HostInfo {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| mem_total(&t))
            .unwrap_or(0);
        HostInfo { cpus, memory_bytes }
    }
}

/// MemTotal from /proc/meminfo's text, in bytes.
pub fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line.split_whitespace().skip(1);
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => n.checked_mul(1024),
        _ => None,
    }
}

/// The limits `start` enforces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Host RAM not given to VMs.
    pub memory_reserve: u64,
    /// Most vCPUs per host CPU.
    pub cpu_ratio: f64,
}

/// What VMs have (or would have).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, ToSchema)]
pub struct Usage {
    pub vms: u32,
    pub vcpus: u32,
    pub memory_bytes: u64,
}

impl Usage {
    pub fn add(&mut self, vcpus: u32, memory_bytes: u64) {
        self.vms += 1;
        self.vcpus = self.vcpus.saturating_add(vcpus);
        self.memory_bytes = self.memory_bytes.saturating_add(memory_bytes);
    }
}

/// Memory VMs may have in all.
pub fn memory_limit(host: &HostInfo, policy: &Policy) -> u64 {
    host.memory_bytes.saturating_sub(policy.memory_reserve)
}

/// vCPUs VMs may have in all.
pub fn vcpu_limit(host: &HostInfo, policy: &Policy) -> u64 {
    (host.cpus as f64 * policy.cpu_ratio).floor() as u64
}

fn mib(b: u64) -> u64 {
    b >> 20
}

/// Whether a VM with `vcpus` and `memory` fits beside the running VMs' `used`; the error gives
/// the numbers.
pub fn check(
    host: &HostInfo,
    policy: &Policy,
    used: &Usage,
    name: &str,
    vcpus: u32,
    memory: u64,
) -> Result<(), String> {
    let mem_limit = memory_limit(host, policy);
    let want_mem = used.memory_bytes.saturating_add(memory);
    if want_mem > mem_limit {
        return Err(format!(
            "not enough memory to start '{name}': it needs {} MiB, running VMs have {} MiB, and \
             VMs may have {} MiB in all (host {} MiB minus a {} MiB reserve)",
            mib(memory),
            mib(used.memory_bytes),
            mib(mem_limit),
            mib(host.memory_bytes),
            mib(policy.memory_reserve)
        ));
    }
    let cpu_limit = vcpu_limit(host, policy);
    let want_cpus = used.vcpus as u64 + vcpus as u64;
    if want_cpus > cpu_limit {
        return Err(format!(
            "not enough CPUs to start '{name}': it needs {vcpus} vCPUs, running VMs have {}, and \
             VMs may have {cpu_limit} in all ({} host CPUs × {})",
            used.vcpus, host.cpus, policy.cpu_ratio
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const HOST: HostInfo = HostInfo {
        cpus: 2,
        memory_bytes: 8 * GIB,
    };
    const POLICY: Policy = Policy {
        memory_reserve: GIB,
        cpu_ratio: 4.0,
    };

    #[test]
    fn meminfo() {
        assert_eq!(
            mem_total("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24576000 * 1024)
        );
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total("MemTotal: x kB\n"), None);
    }

    #[test]
    fn memory_is_host_minus_reserve() {
        let mut used = Usage::default();
        used.add(1, 6 * GIB);
        // 6 + 1 = 7 GiB fits exactly in 8 - 1.
        check(&HOST, &POLICY, &used, "a", 1, GIB).unwrap();
        let e = check(&HOST, &POLICY, &used, "a", 1, GIB + 4096).unwrap_err();
        assert!(
            e.contains("needs 1024 MiB")
                && e.contains("running VMs have 6144 MiB")
                && e.contains("7168 MiB in all")
                && e.contains("host 8192 MiB minus a 1024 MiB reserve"),
            "{e}"
        );
        // A reserve above host RAM leaves nothing, without overflow.
        let tight = Policy {
            memory_reserve: 16 * GIB,
            ..POLICY
        };
        assert!(check(&HOST, &tight, &Usage::default(), "a", 1, 16 << 20).is_err());
    }

    #[test]
    fn vcpus_are_a_ratio_of_host_cpus() {
        let mut used = Usage::default();
        used.add(6, GIB);
        check(&HOST, &POLICY, &used, "a", 2, GIB).unwrap();
        let e = check(&HOST, &POLICY, &used, "a", 3, GIB).unwrap_err();
        assert!(
            e.contains("needs 3 vCPUs") && e.contains("have 6") && e.contains("8 in all"),
            "{e}"
        );
        let half = Policy {
            cpu_ratio: 0.5,
            ..POLICY
        };
        assert_eq!(vcpu_limit(&HOST, &half), 1);
        assert_eq!(used.vms, 1);
    }
}
