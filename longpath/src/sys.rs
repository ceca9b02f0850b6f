//! The system calls the path needs and std does not make: a TUN device, entering a network
//! namespace, real-time scheduling and a read that waits a bounded time. The crate's only
//! `unsafe`, each block with why it is sound.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags, padded to its size.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens a TUN device called `name` (no packet-info header: each read is one IP packet) in
/// the calling thread's network namespace.
pub fn tun(name: &str) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut request = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "name too long"));
    }
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads (and may write back the name into) a `struct ifreq`, 40
    // bytes, which `request` is, alive and exclusively borrowed for the call; the
    // descriptor is open.
    let status = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Moves the calling thread into the network namespace `fd` refers to.
pub fn enter(fd: &File) -> io::Result<()> {
    // SAFETY: setns(2) takes a descriptor, open for the call, and a namespace type; it
    // changes only the calling thread's namespace and touches no memory of ours.
    let status = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts the calling thread under SCHED_RR: a delay line scheduled normally stalls by tens
/// of milliseconds on a busy machine.
pub fn real_time() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: sched_setscheduler(2) reads one `sched_param`, alive for the call; pid 0 is
    // the calling thread.
    let status = unsafe { libc::sched_setscheduler(0, libc::SCHED_RR, &param) };
    if status != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `file` is readable or `timeout` passes; true when readable.
pub fn readable(file: &File, timeout: Duration) -> io::Result<bool> {
    let mut poll = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: poll(2) reads and writes one `pollfd`, alive and exclusively borrowed for the
    // call, whose descriptor is open.
    let status = unsafe { libc::poll(&mut poll, 1, ms) };
    match status {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// A descriptor for the network namespace mounted at `/run/netns/NAME`.
pub fn namespace(name: &str) -> io::Result<File> {
    File::open(format!("/run/netns/{name}"))
}
