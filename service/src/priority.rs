//! The CPU priority of one thread: `qoeflow serve` runs its pipeline on threads of a lower priority
//! than the collector's, so that when the cores are short the beacons are answered first and the
//! pipeline catches up from the log (as RocksDB lowers the priority of its compaction threads).

/// The lowest priority (the highest nice value) a thread can have.
const LOWEST: i32 = 19;
/// The highest priority (the lowest nice value).
const HIGHEST: i32 = -20;

/// How far a thread may be lowered, in nice steps: 0 (not at all) to 19 (to the lowest from 0).
pub const NICE_RANGE: std::ops::RangeInclusive<i32> = 0..=LOWEST;

/// The nice value `steps` (in [`NICE_RANGE`]) below the calling thread's own, at most 19: relative, so
/// that a process started niced keeps the order, and lowering never needs privileges.
pub fn below_this_thread(steps: i32) -> std::io::Result<i32> {
    if !NICE_RANGE.contains(&steps) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{steps} nice steps is outside {NICE_RANGE:?}")));
    }
    Ok(nice()?.saturating_add(steps).min(LOWEST))
}

/// Sets the calling thread's nice value to `nice` (from [`below_this_thread`]: raising a priority
/// would need privileges). On Linux the nice value belongs to each thread, so the process's other
/// threads keep theirs; threads this one starts later inherit it. Elsewhere it does nothing.
pub fn set_this_thread_nice(nice: i32) -> std::io::Result<()> {
    if !(HIGHEST..=LOWEST).contains(&nice) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("nice {nice} is outside {HIGHEST}..={LOWEST}")));
    }
    set_nice(nice)
}

/// Puts the calling thread under Linux's `SCHED_IDLE` policy: it then runs only on CPU time that no
/// thread of another policy wants (within its cgroup, when the cgroup has such threads), and a waking
/// thread of another policy takes its core at once instead of at the end of a time slice. Its nice
/// value no longer counts. Threads it starts later inherit the policy; the process's other threads keep
/// theirs. Lowering needs no privilege; going back would. Elsewhere it does nothing.
pub fn set_this_thread_idle() -> std::io::Result<()> {
    set_idle()
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_idle() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid sched_param for the call's duration; with a thread id,
    // sched_setscheduler sets that thread's policy only (Linux keeps it per thread). SCHED_IDLE takes
    // priority 0.
    let rc = unsafe { libc::sched_setscheduler(libc::gettid(), libc::SCHED_IDLE, &param) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(not(target_os = "linux"))]
fn set_idle() -> std::io::Result<()> {
    Ok(())
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn nice() -> std::io::Result<i32> {
    // SAFETY: errno is this thread's; getpriority takes and returns plain integers. -1 is also a nice
    // value, so errno (cleared first) tells an error from it.
    unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t);
        let err = std::io::Error::last_os_error();
        if nice == -1 && err.raw_os_error().is_some_and(|e| e != 0) { Err(err) } else { Ok(nice) }
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn set_nice(nice: i32) -> std::io::Result<()> {
    // SAFETY: gettid and setpriority take and return plain integers; PRIO_PROCESS with a thread id
    // sets that thread's nice value only (Linux keeps it per thread).
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(not(target_os = "linux"))]
fn nice() -> std::io::Result<i32> {
    Ok(0)
}

#[cfg(not(target_os = "linux"))]
fn set_nice(_nice: i32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Field `field` (numbered as in proc(5), from 3: after the command name) of the `stat` of thread
    /// `tid` of this process.
    fn stat_field(tid: i32, field: usize) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("stat");
        let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
        after_comm.split(' ').nth(field - 3).expect("the field").parse().expect("a number")
    }

    /// The nice value of thread `tid` of this process (field 19).
    fn nice_of(tid: i32) -> i32 {
        stat_field(tid, 19)
    }

    /// The scheduling policy of thread `tid` of this process (field 41).
    fn policy_of(tid: i32) -> i32 {
        stat_field(tid, 41)
    }

    #[allow(unsafe_code)]
    fn tid() -> i32 {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::gettid() }
    }

    #[test]
    fn lowers_only_the_calling_thread_and_what_it_starts() {
        let main = tid();
        let before = nice_of(main);
        let target = below_this_thread(10).expect("a nice value");
        assert_eq!(target, (before + 10).min(LOWEST), "10 below this thread's own, at most 19");
        assert_eq!(below_this_thread(0).expect("a nice value"), before, "0 steps: level");
        let (lowered, child) = std::thread::spawn(move || {
            set_this_thread_nice(target).expect("lowering needs no privilege");
            set_this_thread_nice(target).expect("setting it again changes nothing");
            let child = std::thread::spawn(|| nice_of(tid())).join().expect("child");
            (nice_of(tid()), child)
        })
        .join()
        .expect("thread");
        assert_eq!((lowered, child), (target, target), "the thread and the threads it starts");
        assert_eq!(nice_of(main), before, "the other threads keep theirs");
    }

    #[test]
    fn idle_is_the_calling_thread_s_and_what_it_starts() {
        let main = tid();
        assert_eq!(policy_of(main), libc::SCHED_OTHER, "threads start under the default policy");
        let (idle, child) = std::thread::spawn(|| {
            set_this_thread_idle().expect("lowering needs no privilege");
            set_this_thread_idle().expect("setting it again changes nothing");
            let child = std::thread::spawn(|| policy_of(tid())).join().expect("child");
            (policy_of(tid()), child)
        })
        .join()
        .expect("thread");
        assert_eq!((idle, child), (libc::SCHED_IDLE, libc::SCHED_IDLE), "the thread and the threads it starts");
        assert_eq!(policy_of(main), libc::SCHED_OTHER, "the other threads keep theirs");
    }

    #[test]
    fn refuses_values_outside_the_ranges() {
        for steps in [-1, 20] {
            assert_eq!(below_this_thread(steps).expect_err("refused").kind(), std::io::ErrorKind::InvalidInput);
        }
        let err = std::thread::spawn(|| set_this_thread_nice(20)).join().expect("thread").expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    }
}
