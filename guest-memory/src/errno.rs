//! Linux error numbers as the program sees them.

/// A Linux errno value, returned to the program as `-errno` in RAX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

macro_rules! errnos {
    ($($name:ident),* $(,)?) => {
        impl Errno {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                pub const $name: Errno = Errno(libc::$name);
            )*
        }
    };
}

errnos!(
    EPERM,
    ENOENT,
    ESRCH,
    EINTR,
    EIO,
    EBADF,
    ECHILD,
    EAGAIN,
    ENOMEM,
    EACCES,
    EFAULT,
    EEXIST,
    ENOTDIR,
    EISDIR,
    EINVAL,
    EMFILE,
    ENOTTY,
    ESPIPE,
    ERANGE,
    ENAMETOOLONG,
    ENOSYS,
    ENOTSOCK,
    EOPNOTSUPP,
    ETIMEDOUT,
    ELOOP,
    EXDEV,
    ENOSPC
);

impl Errno {
    /// The calling host thread's current errno.
    pub fn last() -> Errno {
        Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }

    /// The value placed in RAX: `-errno`.
    pub fn as_return(self) -> u64 {
        (-(self.0 as i64)) as u64
    }
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

/// Result of a host syscall made with `libc::syscall`: -1 means "look at errno".
pub fn host_result(ret: libc::c_long) -> Result<u64, Errno> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_value_is_negative_errno() {
        assert_eq!(Errno::EFAULT.as_return() as i64, -14);
        assert_eq!(host_result(5).unwrap(), 5);
    }
}
