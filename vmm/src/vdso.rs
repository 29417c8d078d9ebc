//! ditto's vDSO: the image `build.rs` builds from `vdso/vdso.c`, placed at the fixed
//! address ditto.h gives it (`layout::VDSO`, the same in every run and both replicas of a
//! pair) and named to the program in AT_SYSINFO_EHDR. Its parameter page
//! (`layout::VVAR`) belongs to `devices::timekeeper`; `cpu::build_system_area` makes both
//! user-readable. The image needs no relocation: it reaches the page PC-relative.

use devices::guest_mem::GuestMemory;

use crate::layout;

/// The vDSO image: a linked ELF shared object, `linux-vdso.so.1`.
pub const IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vdso.so"));

// The image must fit its pages; checked when it is built into ditto.
const _: () = assert!(IMAGE.len() as u64 <= layout::VDSO_SIZE);

/// Copies the image into its pages (None: memory too small for the system area).
pub fn install(mem: &GuestMemory) -> Option<()> {
    mem.write_system(layout::VDSO, IMAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use goblin::elf::dynamic::{DT_GNU_HASH, DT_HASH, DT_SONAME, DT_VERDEF, DT_VERSYM};
    use goblin::elf::program_header::{PT_DYNAMIC, PT_LOAD, PT_TLS};
    use goblin::elf::Elf;

    const NAMES: [&str; 5] = [
        "clock_gettime",
        "gettimeofday",
        "time",
        "getcpu",
        "clock_getres",
    ];

    /// What glibc's setup_vdso and dl_vdso_vsym need (docs/det.md, "Time without exits").
    #[test]
    fn image_is_a_vdso_glibc_accepts() {
        let elf = Elf::parse(IMAGE).unwrap();
        let loads: Vec<_> = elf
            .program_headers
            .iter()
            .filter(|p| p.p_type == PT_LOAD)
            .collect();
        assert_eq!(loads.len(), 1, "one PT_LOAD");
        let l = loads[0];
        assert_eq!((l.p_offset, l.p_vaddr), (0, 0), "linked at 0 from offset 0");
        assert_eq!(l.p_filesz, l.p_memsz, "no bss");
        assert!(l.p_filesz <= IMAGE.len() as u64);
        assert!(elf.program_headers.iter().any(|p| p.p_type == PT_DYNAMIC));
        assert!(!elf.program_headers.iter().any(|p| p.p_type == PT_TLS));
        let dynamic = elf.dynamic.as_ref().expect("a dynamic section");
        let has = |tag| dynamic.dyns.iter().any(|d| d.d_tag == tag);
        assert!(has(DT_HASH) && has(DT_GNU_HASH), "both hash tables");
        assert!(has(DT_VERSYM) && has(DT_VERDEF), "symbol versions");
        assert!(has(DT_SONAME));
        assert_eq!(elf.soname, Some("linux-vdso.so.1"));
        assert!(elf.dynrelas.is_empty() && elf.dynrels.is_empty() && elf.pltrelocs.is_empty());
        assert!(
            elf.dynsyms
                .iter()
                .all(|s| s.st_shndx != 0 || s.st_name == 0),
            "no undefined symbols"
        );
        let verdef = elf.verdef.as_ref().expect("a version definition");
        let versym = elf.versym.as_ref().expect("a version table");
        let version_index = verdef
            .iter()
            .find(|d| {
                d.iter()
                    .next()
                    .and_then(|a| elf.dynstrtab.get_at(a.vda_name))
                    == Some("LINUX_2.6")
            })
            .expect("LINUX_2.6 defined")
            .vd_ndx;
        for name in NAMES {
            for full in [format!("__vdso_{name}"), name.to_string()] {
                let (i, sym) = elf
                    .dynsyms
                    .iter()
                    .enumerate()
                    .find(|(_, s)| elf.dynstrtab.get_at(s.st_name) == Some(full.as_str()))
                    .unwrap_or_else(|| panic!("{full} exported"));
                assert!(sym.is_function() && sym.st_value >= l.p_vaddr);
                assert!(sym.st_value + sym.st_size <= l.p_vaddr + l.p_memsz);
                let v = versym.get_at(i).unwrap();
                assert_eq!(v.version(), version_index, "{full} at LINUX_2.6");
            }
        }
        for sym in elf.dynsyms.iter() {
            let name = elf.dynstrtab.get_at(sym.st_name).unwrap_or("");
            assert!(
                !name.contains("getrandom"),
                "no vgetrandom protocol offered"
            );
        }
    }

    #[test]
    fn install_places_the_image() {
        let mem = GuestMemory::new(4 << 20).unwrap();
        assert_eq!(install(&mem), Some(()));
        assert_eq!(
            mem.read_system_u64(layout::VDSO),
            Some(u64::from_le_bytes(IMAGE[..8].try_into().unwrap()))
        );
    }
}
