//! The CPU priority of one thread: `qoeflow serve` runs its pipeline on threads of a lower priority
//! than the collector's, so that when the cores are short the beacons are answered first and the
//! pipeline catches up from the log (as RocksDB lowers the priority of its compaction threads).

/// The nice values a thread may be lowered to: 0 (the process's own priority) to 19 (the lowest).
pub const NICE_RANGE: std::ops::RangeInclusive<i32> = 0..=19;

/// Sets the calling thread's nice value to `nice` (in [`NICE_RANGE`]; raising a priority would need
/// privileges). On Linux the nice value belongs to each thread, so the process's other threads keep
/// theirs; threads this one starts later inherit it. Elsewhere it does nothing.
pub fn set_this_thread_nice(nice: i32) -> std::io::Result<()> {
    if !NICE_RANGE.contains(&nice) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("nice {nice} is outside {NICE_RANGE:?}")));
    }
    set_nice(nice)
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
fn set_nice(_nice: i32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The nice value of thread `tid` of this process (field 19 of its `stat`, after the command name).
    fn nice_of(tid: i32) -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("stat");
        let after_comm = &stat[stat.rfind(')').expect("comm") + 2..];
        after_comm.split(' ').nth(16).expect("nice field").parse().expect("a number")
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
        let (lowered, child) = std::thread::spawn(|| {
            set_this_thread_nice(10).expect("lowering needs no privilege");
            let child = std::thread::spawn(|| nice_of(tid())).join().expect("child");
            (nice_of(tid()), child)
        })
        .join()
        .expect("thread");
        assert_eq!((lowered, child), (10, 10), "the thread and the threads it starts run at nice 10");
        assert_eq!(nice_of(main), before, "the other threads keep theirs");
    }

    #[test]
    fn refuses_values_outside_the_range() {
        for nice in [-1, 20] {
            let err = std::thread::spawn(move || set_this_thread_nice(nice)).join().expect("thread").expect_err("refused");
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
        }
    }
}
