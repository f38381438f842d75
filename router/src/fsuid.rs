//! A thread's filesystem uid switched for the creation of a socket: a socket belongs to the
//! fsuid of the thread that creates it, which is what the kernel's SO_REUSEPORT bind check
//! compares (`leasewatch`, `porthold`). Needs CAP_SETUID; without it the switch does nothing
//! (callers check the uid of what they created).

/// This thread's fsuid switched to another uid for as long as it lives. Nothing else is done
/// while it is switched.
pub struct FsUid(u32);

impl FsUid {
    pub fn switch(uid: u32) -> FsUid {
        // SAFETY: setfsuid(2) changes only this thread's filesystem uid (glibc does not
        // broadcast it to other threads); it returns the previous one, restored on drop.
        FsUid(unsafe { libc::setfsuid(uid) } as u32)
    }
}

impl Drop for FsUid {
    fn drop(&mut self) {
        // SAFETY: as in `switch`; back to the uid this thread had.
        unsafe { libc::setfsuid(self.0) };
    }
}
