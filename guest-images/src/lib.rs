//! Guest root filesystems built from Debian packages (`image`), and the project's own
//! guest programs and the `libditto` interposer (`progs`).

pub mod image;
pub mod progs;
