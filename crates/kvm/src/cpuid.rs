//! Per-vCPU CPUID: what KVM supports on this host, with vireo's topology written in (one
//! package, `cpus` cores, one thread per core; APIC id = vCPU index) and KVM's paravirtual
//! leaves kept so the guest finds kvmclock.

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// KVM's hypervisor signature leaf and the "KVMKVMKVM\0\0\0" signature.
pub const KVM_CPUID_SIGNATURE: u32 = 0x4000_0000;
pub const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const EDX_HTT: u32 = 1 << 28;
const ECX_HYPERVISOR: u32 = 1 << 31;
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits of an APIC id that number cores: ceil(log2(cpus)).
pub fn core_bits(cpus: u32) -> u32 {
    if cpus <= 1 {
        0
    } else {
        32 - (cpus - 1).leading_zeros()
    }
}

fn topology_entry(function: u32, index: u32, cpu: u32, cpus: u32) -> kvm_cpuid_entry2 {
    let (eax, ebx, ecx) = match index {
        // SMT level: one thread per core, so nothing to shift to reach the core id.
        0 => (0, 1, (LEVEL_SMT << 8) | index),
        // Core level: shifting out the core bits leaves the package id.
        1 => (core_bits(cpus), cpus, (LEVEL_CORE << 8) | index),
        _ => (0, 0, index),
    };
    kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx,
        edx: cpu,
        ..Default::default()
    }
}

/// Rewrites `entries` (KVM_GET_SUPPORTED_CPUID's list) for vCPU `cpu` of `cpus`.
pub fn patch(entries: &mut Vec<kvm_cpuid_entry2>, cpu: u32, cpus: u32) {
    let cpus = cpus.max(1);
    let bits = core_bits(cpus);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // Initial APIC id, and the number of addressable logical processor ids.
                let logical = (1u32 << bits).min(255);
                e.ebx = (e.ebx & 0xffff) | (cpu << 24) | (logical << 16);
                e.edx |= EDX_HTT;
                e.ecx |= ECX_HYPERVISOR;
            }
            LEAF_CACHE => {
                // Cores per package, and (for shared caches, level 3) cores sharing it.
                let level = (e.eax >> 5) & 7;
                let sharing = if level >= 3 { cpus - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | ((cpus - 1).min(63) << 26) | (sharing.min(0xfff) << 14);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                *e = topology_entry(e.function, e.index, cpu, cpus);
            }
            LEAF_AMD_SIZES => {
                // NC (cores - 1) and ApicIdCoreIdSize.
                e.ecx = (e.ecx & !0xf0ff) | (bits << 12) | (cpus - 1).min(255);
            }
            LEAF_AMD_TOPOLOGY => {
                e.eax = cpu;
                e.ebx = cpu & 0xff; // compute unit id; one thread per unit
                e.ecx = 0; // node 0
            }
            KVM_CPUID_SIGNATURE => {
                e.eax = e.eax.max(KVM_CPUID_FEATURES);
                [e.ebx, e.ecx, e.edx] = KVM_SIGNATURE;
            }
            _ => {}
        }
    }
    // A leaf 0xb/0x1f that KVM reported without both levels gets the missing ones.
    for function in [LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2] {
        if !entries.iter().any(|e| e.function == function) {
            continue;
        }
        for index in 0..2 {
            if !entries
                .iter()
                .any(|e| e.function == function && e.index == index)
            {
                entries.push(topology_entry(function, index, cpu, cpus));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    #[test]
    fn bits() {
        assert_eq!(core_bits(1), 0);
        assert_eq!(core_bits(2), 1);
        assert_eq!(core_bits(3), 2);
        assert_eq!(core_bits(4), 2);
        assert_eq!(core_bits(5), 3);
    }

    #[test]
    fn topology_for_cpu_2_of_4() {
        let mut l1 = entry(1, 0);
        l1.ebx = 0x0008_0800; // clflush size 8, brand index 0
        let mut v = vec![
            l1,
            entry(0xb, 0),
            entry(0x8000_0008, 0),
            entry(KVM_CPUID_SIGNATURE, 0),
            entry(0x4000_0001, 0),
        ];
        patch(&mut v, 2, 4);
        assert_eq!(v[0].ebx >> 24, 2);
        assert_eq!((v[0].ebx >> 16) & 0xff, 4);
        assert_eq!(v[0].ebx & 0xffff, 0x0800);
        assert_ne!(v[0].edx & EDX_HTT, 0);
        assert_ne!(v[0].ecx & ECX_HYPERVISOR, 0);
        // Leaf 0xb: both levels, x2APIC id in edx.
        let smt = v
            .iter()
            .find(|e| e.function == 0xb && e.index == 0)
            .unwrap();
        let core = v
            .iter()
            .find(|e| e.function == 0xb && e.index == 1)
            .unwrap();
        assert_eq!((smt.eax, smt.ebx, smt.ecx >> 8, smt.edx), (0, 1, 1, 2));
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (2, 4, 2, 2));
        assert_eq!(v[2].ecx & 0xff, 3);
        assert_eq!((v[2].ecx >> 12) & 0xf, 2);
        assert_eq!(v[3].eax, KVM_CPUID_FEATURES);
        let sig: Vec<u8> = [v[3].ebx, v[3].ecx, v[3].edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        assert_eq!(&sig, b"KVMKVMKVM\0\0\0");
    }
}
