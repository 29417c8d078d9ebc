//! The program's virtual credentials: user and group ids, supplementary groups and
//! capability sets, with Linux's rules for a process that is root in its own user
//! namespace (every id mapped; privilege means holding the capability).
//!
//! Nothing here reaches the host: the VMM keeps its own ids for every host access, and
//! these are what the program sees (get*id, capget, /proc/self/status) and what decides
//! whether its next set*id call is allowed. Linux keeps credentials per thread and glibc
//! (and Go) make every thread repeat a set*id call; here they are per process, which gives
//! the same result for the repeated calls (each repeat asks for ids the first one set, which
//! needs no privilege).

use thiserror::Error;

/// `(uid_t)-1`: "leave unchanged" in setre*id/setres*id, invalid elsewhere.
pub const UNCHANGED: u32 = u32::MAX;

/// Capabilities Linux knows (CAP_LAST_CAP is 40, CAP_CHECKPOINT_RESTORE).
pub const ALL_CAPS: u64 = (1 << 41) - 1;

/// The most supplementary groups setgroups accepts (Linux's NGROUPS_MAX).
pub const NGROUPS_MAX: usize = 65536;

const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SETPCAP: u32 = 8;

/// The capabilities a filesystem-uid change from or to 0 turns off or on (capabilities(7)).
const FS_CAPS: u64 = (1 << 0)  // CAP_CHOWN
    | (1 << 1)  // CAP_DAC_OVERRIDE
    | (1 << 2)  // CAP_DAC_READ_SEARCH
    | (1 << 3)  // CAP_FOWNER
    | (1 << 4)  // CAP_FSETID
    | (1 << 9)  // CAP_LINUX_IMMUTABLE
    | (1 << 27) // CAP_MKNOD
    | (1 << 32); // CAP_MAC_OVERRIDE

/// Why a credential change is refused (the errno Linux gives).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum CredError {
    /// The caller lacks the capability, or asks for an id it may not take.
    #[error("operation not permitted")]
    NotPermitted,
    /// An id of -1 where one is required, or too many groups.
    #[error("invalid argument")]
    Invalid,
}

/// Real, effective, saved and filesystem ids (of users or of groups).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdSet {
    /// Real id.
    pub real: u32,
    /// Effective id.
    pub effective: u32,
    /// Saved set-id.
    pub saved: u32,
    /// Filesystem id.
    pub fs: u32,
}

impl IdSet {
    fn all(id: u32) -> Self {
        IdSet {
            real: id,
            effective: id,
            saved: id,
            fs: id,
        }
    }

    fn holds(&self, id: u32) -> bool {
        id == self.real || id == self.effective || id == self.saved
    }

    /// setuid/setgid: privileged sets all four; otherwise the effective (and fs) id may
    /// become the real or the saved one.
    fn set(&mut self, id: u32, privileged: bool) -> Result<(), CredError> {
        if id == UNCHANGED {
            return Err(CredError::Invalid);
        }
        if privileged {
            *self = IdSet::all(id);
        } else if id == self.real || id == self.saved {
            self.effective = id;
            self.fs = id;
        } else {
            return Err(CredError::NotPermitted);
        }
        Ok(())
    }

    /// setreuid/setregid (setreuid(2)): the saved id follows the new effective one when
    /// the real id is set, or the effective one is set to other than the old real id.
    fn set_re(&mut self, r: u32, e: u32, privileged: bool) -> Result<(), CredError> {
        let ok_r = r == UNCHANGED || privileged || r == self.real || r == self.effective;
        let ok_e = e == UNCHANGED || privileged || self.holds(e);
        if !ok_r || !ok_e {
            return Err(CredError::NotPermitted);
        }
        let old_real = self.real;
        if r != UNCHANGED {
            self.real = r;
        }
        if e != UNCHANGED {
            self.effective = e;
        }
        if r != UNCHANGED || (e != UNCHANGED && e != old_real) {
            self.saved = self.effective;
        }
        self.fs = self.effective;
        Ok(())
    }

    /// setresuid/setresgid: unprivileged, each new id must be one of the current three.
    fn set_res(&mut self, r: u32, e: u32, s: u32, privileged: bool) -> Result<(), CredError> {
        let ok = |id: u32| id == UNCHANGED || privileged || self.holds(id);
        if !(ok(r) && ok(e) && ok(s)) {
            return Err(CredError::NotPermitted);
        }
        for (slot, id) in [
            (&mut self.real, r),
            (&mut self.effective, e),
            (&mut self.saved, s),
        ] {
            if id != UNCHANGED {
                *slot = id;
            }
        }
        self.fs = self.effective;
        Ok(())
    }

    /// setfsuid/setfsgid: always answers the old fs id; changes it only when allowed.
    fn set_fs(&mut self, id: u32, privileged: bool) -> u32 {
        let old = self.fs;
        if id != UNCHANGED && (privileged || self.holds(id) || id == self.fs) {
            self.fs = id;
        }
        old
    }
}

/// Capability sets (capabilities(7)), one bit per capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    /// Effective.
    pub effective: u64,
    /// Permitted.
    pub permitted: u64,
    /// Inheritable.
    pub inheritable: u64,
    /// Bounding.
    pub bounding: u64,
    /// Ambient.
    pub ambient: u64,
}

/// One process's credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// User ids.
    pub uid: IdSet,
    /// Group ids.
    pub gid: IdSet,
    /// Supplementary groups, in the order set.
    pub groups: Vec<u32>,
    /// Capability sets.
    pub caps: Caps,
    /// PR_SET_KEEPCAPS: keep the permitted set when all uids leave 0.
    pub keep_caps: bool,
}

impl Credentials {
    /// Credentials of a process with these ids: uid 0 holds every capability, as root in
    /// a user namespace does; any other uid holds none.
    pub fn new(uid: u32, gid: u32, groups: Vec<u32>) -> Self {
        let all = if uid == 0 { ALL_CAPS } else { 0 };
        Credentials {
            uid: IdSet::all(uid),
            gid: IdSet::all(gid),
            groups,
            caps: Caps {
                effective: all,
                permitted: all,
                inheritable: 0,
                bounding: ALL_CAPS,
                ambient: 0,
            },
            keep_caps: false,
        }
    }

    /// The VMM's own ids and groups, as the program's starting credentials.
    pub fn from_host() -> Self {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let mut groups = vec![0 as libc::gid_t; NGROUPS_MAX];
        // SAFETY: the buffer holds NGROUPS_MAX entries, the count passed.
        let n = unsafe { libc::getgroups(NGROUPS_MAX as i32, groups.as_mut_ptr()) };
        groups.truncate(usize::try_from(n).unwrap_or(0));
        Credentials::new(uid, gid, groups)
    }

    /// Whether capability `cap` is in the effective set.
    pub fn capable(&self, cap: u32) -> bool {
        self.caps.effective & (1 << cap) != 0
    }

    /// Applies a user-id change and the capability changes it implies (capabilities(7),
    /// "Effect of user ID changes on capabilities"); undone when refused.
    fn change_uid(
        &mut self,
        f: impl FnOnce(&mut IdSet, bool) -> Result<(), CredError>,
    ) -> Result<(), CredError> {
        let old = self.uid;
        let privileged = self.capable(CAP_SETUID);
        f(&mut self.uid, privileged)?;
        self.fix_caps(old);
        Ok(())
    }

    fn fix_caps(&mut self, old: IdSet) {
        let new = self.uid;
        let had_root = old.real == 0 || old.effective == 0 || old.saved == 0;
        let has_root = new.real == 0 || new.effective == 0 || new.saved == 0;
        let c = &mut self.caps;
        if had_root && !has_root {
            if !self.keep_caps {
                c.permitted = 0;
                c.effective = 0;
            }
            c.ambient = 0;
        }
        if old.effective == 0 && new.effective != 0 {
            c.effective = 0;
        } else if old.effective != 0 && new.effective == 0 {
            c.effective = c.permitted;
        }
        if old.fs == 0 && new.fs != 0 {
            c.effective &= !FS_CAPS;
        } else if old.fs != 0 && new.fs == 0 {
            c.effective |= c.permitted & FS_CAPS;
        }
    }

    /// setuid(2).
    pub fn setuid(&mut self, id: u32) -> Result<(), CredError> {
        self.change_uid(|u, p| u.set(id, p))
    }

    /// setreuid(2).
    pub fn setreuid(&mut self, r: u32, e: u32) -> Result<(), CredError> {
        self.change_uid(|u, p| u.set_re(r, e, p))
    }

    /// setresuid(2).
    pub fn setresuid(&mut self, r: u32, e: u32, s: u32) -> Result<(), CredError> {
        self.change_uid(|u, p| u.set_res(r, e, s, p))
    }

    /// setfsuid(2): the old fs uid, whether or not it changed.
    pub fn setfsuid(&mut self, id: u32) -> u32 {
        let old = self.uid;
        let privileged = self.capable(CAP_SETUID);
        let r = self.uid.set_fs(id, privileged);
        self.fix_caps(old);
        r
    }

    /// setgid(2).
    pub fn setgid(&mut self, id: u32) -> Result<(), CredError> {
        let p = self.capable(CAP_SETGID);
        self.gid.set(id, p)
    }

    /// setregid(2).
    pub fn setregid(&mut self, r: u32, e: u32) -> Result<(), CredError> {
        let p = self.capable(CAP_SETGID);
        self.gid.set_re(r, e, p)
    }

    /// setresgid(2).
    pub fn setresgid(&mut self, r: u32, e: u32, s: u32) -> Result<(), CredError> {
        let p = self.capable(CAP_SETGID);
        self.gid.set_res(r, e, s, p)
    }

    /// setfsgid(2).
    pub fn setfsgid(&mut self, id: u32) -> u32 {
        let p = self.capable(CAP_SETGID);
        self.gid.set_fs(id, p)
    }

    /// setgroups(2).
    pub fn setgroups(&mut self, groups: Vec<u32>) -> Result<(), CredError> {
        if groups.len() > NGROUPS_MAX {
            return Err(CredError::Invalid);
        }
        if !self.capable(CAP_SETGID) {
            return Err(CredError::NotPermitted);
        }
        self.groups = groups;
        Ok(())
    }

    /// capset(2): permitted may only shrink, effective must lie within the new
    /// permitted, inheritable within the old inheritable and permitted (or, holding
    /// CAP_SETPCAP, the bounding set).
    pub fn capset(
        &mut self,
        effective: u64,
        permitted: u64,
        inheritable: u64,
    ) -> Result<(), CredError> {
        let c = self.caps;
        let inh_limit = if self.capable(CAP_SETPCAP) {
            c.inheritable | c.bounding
        } else {
            c.inheritable | c.permitted
        };
        if permitted & !c.permitted != 0
            || effective & !permitted != 0
            || inheritable & !inh_limit != 0
        {
            return Err(CredError::NotPermitted);
        }
        self.caps.effective = effective;
        self.caps.permitted = permitted;
        self.caps.inheritable = inheritable;
        self.caps.ambient &= permitted & inheritable;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_drops_and_cannot_return() {
        let mut c = Credentials::new(0, 0, vec![0]);
        c.setgroups(vec![65534]).unwrap();
        c.setgid(65534).unwrap();
        c.setuid(65534).unwrap();
        assert_eq!(c.uid, IdSet::all(65534));
        assert_eq!(c.gid, IdSet::all(65534));
        assert_eq!(c.groups, vec![65534]);
        assert_eq!((c.caps.effective, c.caps.permitted), (0, 0));
        assert_eq!(c.setuid(0), Err(CredError::NotPermitted));
        assert_eq!(c.setgroups(vec![]), Err(CredError::NotPermitted));
        // Repeating the drop (glibc does, once per thread) needs no privilege.
        c.setuid(65534).unwrap();
        c.setresuid(65534, 65534, 65534).unwrap();
    }

    #[test]
    fn effective_only_drop_can_return() {
        let mut c = Credentials::new(0, 0, vec![]);
        c.setresuid(UNCHANGED, 1000, UNCHANGED).unwrap();
        assert_eq!(c.caps.effective, 0);
        assert_eq!(c.caps.permitted, ALL_CAPS);
        c.setresuid(UNCHANGED, 0, UNCHANGED).unwrap();
        assert_eq!(c.caps.effective, ALL_CAPS);
    }

    #[test]
    fn setreuid_moves_saved_id() {
        let mut c = Credentials::new(0, 0, vec![]);
        c.setreuid(1000, 1000).unwrap();
        assert_eq!(c.uid, IdSet::all(1000));
        assert_eq!(c.setreuid(0, UNCHANGED), Err(CredError::NotPermitted));
    }

    #[test]
    fn invalid_and_unprivileged_requests() {
        let mut c = Credentials::new(1000, 1000, vec![]);
        assert_eq!(c.setuid(UNCHANGED), Err(CredError::Invalid));
        assert_eq!(c.setuid(0), Err(CredError::NotPermitted));
        assert_eq!(c.setgid(0), Err(CredError::NotPermitted));
        assert_eq!(c.setfsuid(0), 1000);
        assert_eq!(c.uid.fs, 1000);
        assert_eq!(c.capset(0, 1, 0), Err(CredError::NotPermitted));
    }

    #[test]
    fn capset_shrinks_and_keep_caps_keeps() {
        let mut c = Credentials::new(0, 0, vec![]);
        c.capset(1 << CAP_SETUID, 1 << CAP_SETUID, 0).unwrap();
        assert_eq!(
            c.capset(ALL_CAPS, ALL_CAPS, 0),
            Err(CredError::NotPermitted)
        );
        c.keep_caps = true;
        c.setresuid(1000, 1000, 1000).unwrap();
        assert_eq!(c.caps.permitted, 1 << CAP_SETUID);
        assert_eq!(c.caps.effective, 0);
    }

    #[test]
    fn fsuid_change_drops_fs_caps() {
        let mut c = Credentials::new(0, 0, vec![]);
        assert_eq!(c.setfsuid(1000), 0);
        assert_eq!(c.caps.effective, ALL_CAPS & !FS_CAPS);
        assert_eq!(c.setfsuid(0), 1000);
        assert_eq!(c.caps.effective, ALL_CAPS);
    }
}
