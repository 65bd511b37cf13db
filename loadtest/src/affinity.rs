//! CPU pinning of the calling thread; children spawned from a pinned thread
//! inherit its mask, which is how `compare` pins servers and clients without
//! `taskset`.

use std::io;

pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array for which all-zero is the empty
    // set; CPU_SET writes inside it for indices below CPU_SETSIZE, which
    // parse_cpu_list bounds to 4096 and we check against the set's size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
        for &c in cpus {
            if c >= max {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("CPU {c} is beyond the {max} a cpu_set_t holds"),
                ));
            }
            libc::CPU_SET(c, &mut set);
        }
        // pid 0 is the calling thread.
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
