//! ELF loading: static, static-PIE, and dynamic programs (PT_INTERP, with the
//! interpreter loaded from the program's root). Segments are copied into guest
//! memory; position-independent images get fixed bases, so addresses are the same
//! on every run (no ASLR).

use std::ffi::{CStr, CString};
use std::io::Read;

use goblin::elf::{header, program_header, Elf};

use devices::guest_mem::{GuestMemory, USER_START};
use devices::path::FsContext;

/// Where a position-independent program is placed.
pub const PIE_BASE: u64 = 0x40_0000;
/// Largest ELF file we read (a guard against reading a huge non-program file).
const MAX_ELF_SIZE: u64 = 1 << 30;

/// Errors from loading a program. Each says which file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be opened inside the root.
    #[error("cannot open {path}: {errno}")]
    Open {
        /// Path inside the root.
        path: String,
        /// Why.
        errno: devices::Errno,
    },
    /// Reading it failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Path inside the root.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not an ELF file.
    #[error("{path} is not an ELF file")]
    NotElf {
        /// Path inside the root.
        path: String,
    },
    /// An ELF file for another machine or class.
    #[error("{path} is not an x86-64 ELF executable ({what})")]
    WrongArch {
        /// Path inside the root.
        path: String,
        /// What it is instead.
        what: String,
    },
    /// Headers or segments point past the end of the file, or are inconsistent.
    #[error("{path} is a malformed or truncated ELF file: {why}")]
    Malformed {
        /// Path inside the root.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// The images do not fit in guest memory.
    #[error("{path} does not fit in guest memory (needs up to {end:#x}, have {size:#x}); try a larger --memory")]
    TooBig {
        /// Path inside the root.
        path: String,
        /// Highest address needed.
        end: u64,
        /// Guest memory size.
        size: u64,
    },
}

/// What the initial stack's auxv needs to know about the loaded images.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadedProgram {
    /// Where execution starts (the interpreter's entry for dynamic programs).
    pub start: u64,
    /// The program's own entry (AT_ENTRY).
    pub entry: u64,
    /// Address of the program headers (AT_PHDR).
    pub phdr: u64,
    /// Number of program headers (AT_PHNUM).
    pub phnum: u64,
    /// Interpreter base (AT_BASE), 0 for static programs.
    pub interp_base: u64,
    /// End of the highest loaded image.
    pub image_end: u64,
    /// The mappings the images make, for /proc/self/maps.
    pub segments: Vec<Segment>,
    /// The interpreter's path (PT_INTERP), for dynamic programs.
    pub interp_path: Option<String>,
}

/// One mapping of a loaded image, as Linux's loader would have made it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// First byte (page-aligned).
    pub start: u64,
    /// One past the last byte (page-aligned).
    pub end: u64,
    /// PROT_* bits.
    pub prot: u32,
    /// File offset of `start`; None for the zero-filled tail (bss).
    pub offset: Option<u64>,
    /// Whether it belongs to the interpreter rather than the program.
    pub interp: bool,
    /// The file's device and inode.
    pub dev_ino: (u64, u64),
}

struct Image {
    segments: Vec<Segment>,
    base: u64,
    entry: u64,
    phdr: u64,
    phnum: u64,
    end: u64,
    interp: Option<CString>,
}

fn read_file(fs: &FsContext, path: &CStr) -> Result<(Vec<u8>, (u64, u64)), LoadError> {
    let name = path.to_string_lossy().into_owned();
    let fd = fs
        .open(None, path, libc::O_RDONLY, 0)
        .map_err(|errno| LoadError::Open {
            path: name.clone(),
            errno,
        })?;
    let mut f = std::fs::File::from(fd);
    let meta = f.metadata().map_err(|source| LoadError::Read {
        path: name.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(LoadError::NotElf { path: name });
    }
    let mut data = Vec::new();
    f.by_ref()
        .take(MAX_ELF_SIZE)
        .read_to_end(&mut data)
        .map_err(|source| LoadError::Read { path: name, source })?;
    use std::os::unix::fs::MetadataExt;
    Ok((data, (meta.dev(), meta.ino())))
}

fn load_image(
    mem: &GuestMemory,
    name: &str,
    data: &[u8],
    base_for_dyn: u64,
) -> Result<Image, LoadError> {
    let malformed = |why: String| LoadError::Malformed {
        path: name.to_string(),
        why,
    };
    if data.len() < 4 || &data[..4] != b"\x7fELF" {
        return Err(LoadError::NotElf {
            path: name.to_string(),
        });
    }
    if data.len() < 64 {
        return Err(malformed("file shorter than an ELF header".into()));
    }
    if data[4] != header::ELFCLASS64 {
        return Err(LoadError::WrongArch {
            path: name.to_string(),
            what: "32-bit".into(),
        });
    }
    let elf = Elf::parse(data).map_err(|e| malformed(e.to_string()))?;
    if elf.header.e_machine != header::EM_X86_64 {
        return Err(LoadError::WrongArch {
            path: name.to_string(),
            what: format!("machine {}", header::machine_to_str(elf.header.e_machine)),
        });
    }
    let base = match elf.header.e_type {
        header::ET_EXEC => 0,
        header::ET_DYN => base_for_dyn,
        t => {
            return Err(LoadError::WrongArch {
                path: name.to_string(),
                what: format!("ELF type {}", header::et_to_str(t)),
            })
        }
    };
    let loads: Vec<_> = elf
        .program_headers
        .iter()
        .filter(|p| p.p_type == program_header::PT_LOAD)
        .collect();
    if loads.is_empty() {
        return Err(malformed("no loadable segments".into()));
    }
    let mut end = 0u64;
    let mut phdr = None;
    let mut segments = Vec::new();
    for p in &loads {
        let file_end = p
            .p_offset
            .checked_add(p.p_filesz)
            .ok_or_else(|| malformed("segment offset overflows".into()))?;
        if file_end > data.len() as u64 {
            return Err(malformed(format!(
                "segment at file offset {:#x}+{:#x} runs past the end of the file ({:#x} bytes)",
                p.p_offset,
                p.p_filesz,
                data.len()
            )));
        }
        if p.p_filesz > p.p_memsz {
            return Err(malformed("segment file size exceeds memory size".into()));
        }
        let start = base
            .checked_add(p.p_vaddr)
            .ok_or_else(|| malformed("segment address overflows".into()))?;
        let seg_end = start
            .checked_add(p.p_memsz)
            .ok_or_else(|| malformed("segment size overflows".into()))?;
        if start < USER_START || seg_end > mem.size() {
            return Err(LoadError::TooBig {
                path: name.to_string(),
                end: seg_end,
                size: mem.size(),
            });
        }
        // Copy from the page start, as mmap would, so bytes before p_vaddr in the
        // first page (often the ELF and program headers) are visible too.
        let lead = (p.p_vaddr % 4096).min(p.p_offset);
        // lead <= p_offset, and lead <= p_vaddr % 4096 <= start.
        let bytes = &data[(p.p_offset - lead) as usize..file_end as usize];
        mem.write_bytes(start - lead, bytes)
            .map_err(|_| malformed("segment outside memory".into()))?;
        end = end.max(seg_end);
        let prot = [
            (4, libc::PROT_READ),
            (2, libc::PROT_WRITE),
            (1, libc::PROT_EXEC),
        ]
        .iter()
        .filter(|(pf, _)| p.p_flags & pf != 0)
        .fold(0u32, |acc, (_, pr)| acc | *pr as u32);
        // Linux maps the file pages of a segment and adds anonymous pages for the rest
        // of its memory size (bss).
        let page = (start - lead) & !0xfff;
        let mapped_end = (start + p.p_filesz + 0xfff) & !0xfff;
        let mem_end = (seg_end + 0xfff) & !0xfff;
        if mapped_end > page {
            segments.push(Segment {
                start: page,
                end: mapped_end,
                prot,
                offset: Some((p.p_offset - lead) & !0xfff),
                ..Default::default()
            });
        }
        if mem_end > mapped_end.max(page) {
            segments.push(Segment {
                start: mapped_end.max(page),
                end: mem_end,
                prot,
                offset: None,
                ..Default::default()
            });
        }
        let ph_off = elf.header.e_phoff;
        if phdr.is_none() && ph_off >= p.p_offset && ph_off < file_end {
            phdr = Some(start + (ph_off - p.p_offset));
        }
    }
    if let Some(p) = elf
        .program_headers
        .iter()
        .find(|p| p.p_type == program_header::PT_PHDR)
    {
        phdr = Some(
            base.checked_add(p.p_vaddr)
                .ok_or_else(|| malformed("PT_PHDR address overflows".into()))?,
        );
    }
    let interp = match elf.interpreter {
        Some(i) => Some(CString::new(i).map_err(|_| malformed("bad PT_INTERP".into()))?),
        None => None,
    };
    let entry = base
        .checked_add(elf.header.e_entry)
        .ok_or_else(|| malformed("entry point overflows".into()))?;
    Ok(Image {
        segments,
        base,
        entry,
        phdr: phdr.unwrap_or(0),
        phnum: elf.header.e_phnum as u64,
        end,
        interp,
    })
}

/// Loads the program at `path` (inside the root) and, for a dynamic program, its
/// interpreter from the same root.
pub fn load_program(
    mem: &GuestMemory,
    fs: &FsContext,
    path: &CStr,
) -> Result<LoadedProgram, LoadError> {
    let name = path.to_string_lossy().into_owned();
    let (data, dev_ino) = read_file(fs, path)?;
    let prog = load_image(mem, &name, &data, PIE_BASE)?;
    let tag = |segs: &[Segment], interp| {
        segs.iter()
            .map(|s| Segment {
                interp,
                dev_ino,
                ..s.clone()
            })
            .collect::<Vec<_>>()
    };
    let mut loaded = LoadedProgram {
        start: prog.entry,
        entry: prog.entry,
        phdr: prog.phdr,
        phnum: prog.phnum,
        interp_base: 0,
        image_end: prog.end,
        segments: tag(&prog.segments, false),
        interp_path: None,
    };
    if let Some(interp) = prog.interp {
        let iname = interp.to_string_lossy().into_owned();
        let (idata, idev_ino) = read_file(fs, &interp)?;
        // 2 MiB-aligned gap after the program keeps the interpreter's own brk-less
        // data clear of anything the program may grow into.
        let ibase = prog
            .end
            .checked_add(4 << 20)
            .ok_or_else(|| LoadError::TooBig {
                path: name.clone(),
                end: prog.end,
                size: mem.size(),
            })?
            & !((2 << 20) - 1);
        let i = load_image(mem, &iname, &idata, ibase)?;
        if i.base == 0 {
            return Err(LoadError::WrongArch {
                path: iname,
                what: "interpreter is not position-independent".into(),
            });
        }
        loaded.segments.extend(i.segments.iter().map(|s| Segment {
            interp: true,
            dev_ino: idev_ino,
            ..s.clone()
        }));
        loaded.interp_path = Some(iname);
        loaded.start = i.entry;
        loaded.interp_base = i.base;
        loaded.image_end = i.end.max(prog.end);
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemory {
        GuestMemory::new(64 << 20).unwrap()
    }

    #[test]
    fn rejects_non_elf_and_truncated() {
        let m = mem();
        assert!(matches!(
            load_image(&m, "x", b"#!/bin/sh\n", 0),
            Err(LoadError::NotElf { .. })
        ));
        let mut short = b"\x7fELF".to_vec();
        short.extend_from_slice(&[2, 1, 1, 0]);
        assert!(matches!(
            load_image(&m, "x", &short, 0),
            Err(LoadError::Malformed { .. })
        ));
    }

    #[test]
    fn loads_host_binary_and_rejects_truncation() {
        let m = GuestMemory::new(256 << 20).unwrap();
        let data = std::fs::read("/bin/true").unwrap();
        let img = load_image(&m, "/bin/true", &data, PIE_BASE).unwrap();
        assert!(img.entry > PIE_BASE && img.end > img.entry);
        assert!(img.interp.is_some());
        assert_eq!(m.read_bytes(img.phdr, 4).unwrap().len(), 4);
        let cut = &data[..data.len() / 3];
        assert!(matches!(
            load_image(&GuestMemory::new(256 << 20).unwrap(), "t", cut, PIE_BASE),
            Err(LoadError::Malformed { .. })
        ));
    }

    #[test]
    fn rejects_32bit() {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 1;
        assert!(matches!(
            load_image(&mem(), "x", &h, 0),
            Err(LoadError::WrongArch { .. })
        ));
    }
}
