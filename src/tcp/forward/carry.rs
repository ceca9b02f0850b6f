//! A copy's state as the next relay takes it over (`tcp::handover`): per direction the
//! bytes read and not yet written, its pipe (whose descriptors go beside the text, bytes
//! and all), what it moved and whether it is done.

use super::{Copying, OneWay};
use crate::outcome::End;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

/// [`Copying`] as text, its pipes' descriptors aside.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct CopyingWire {
    up: OneWayWire,
    down: OneWayWire,
    spliced: u64,
    quiet: Duration,
    keepalive_due: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct OneWayWire {
    #[serde(with = "crate::tcp::handover::bytes")]
    pending: Vec<u8>,
    bulk: bool,
    moved: u64,
    done: bool,
    /// The bytes in its pipe, whose read and write ends come next among the descriptors;
    /// `None` without one.
    pipe: Option<u32>,
}

impl Copying {
    /// The state as text, and the descriptors of its pipes (up's, then down's).
    pub fn to_wire<'a>(&'a self) -> (CopyingWire, Vec<BorrowedFd<'a>>) {
        let mut fds = Vec::new();
        let mut wire = |one: &'a OneWay| {
            let pipe = one.pipe_fds().map(|(pending, ends)| {
                fds.extend(ends);
                pending
            });
            OneWayWire {
                pending: one.buffer[one.written..].to_vec(),
                bulk: one.bulk,
                moved: one.moved,
                done: one.done,
                pipe,
            }
        };
        let (up, down) = (wire(&self.up), wire(&self.down));
        let copying = CopyingWire {
            up,
            down,
            spliced: self.spliced,
            quiet: self.quiet,
            keepalive_due: self.keepalive_due,
        };
        (copying, fds)
    }

    /// The state [`Copying::to_wire`] described, its pipes taken from `fds`.
    pub fn from_wire(
        wire: CopyingWire,
        fds: &mut impl Iterator<Item = OwnedFd>,
    ) -> Result<Copying, String> {
        let mut one = |wire: OneWayWire, ends: [End; 2]| -> Result<OneWay, String> {
            let mut one = OneWay::new(wire.pending, ends);
            one.bulk = wire.bulk;
            one.moved = wire.moved;
            one.done = wire.done;
            if let Some(pending) = wire.pipe {
                let missing = || "a pipe without its descriptors".to_owned();
                let (read, write) = (
                    fds.next().ok_or_else(missing)?,
                    fds.next().ok_or_else(missing)?,
                );
                one.take_pipe(read, write, pending)?;
            }
            Ok(one)
        };
        Ok(Copying {
            up: one(wire.up, [End::ClientReset, End::UpstreamReset])?,
            down: one(wire.down, [End::UpstreamReset, End::ClientReset])?,
            spliced: wire.spliced,
            quiet: wire.quiet,
            keepalive_due: wire.keepalive_due,
        })
    }
}

impl Copying {
    /// Bytes read and not yet written: in buffers, and in pipes.
    pub fn held(&self) -> (u64, u64) {
        let buffered = |one: &OneWay| (one.buffer.len() - one.written) as u64;
        let piped = |one: &OneWay| one.pipe_fds().map_or(0, |(pending, _)| u64::from(pending));
        (
            buffered(&self.up) + buffered(&self.down),
            piped(&self.up) + piped(&self.down),
        )
    }
}

impl OneWay {
    /// The bytes in its pipe and the pipe's ends, if it has one.
    #[cfg(target_os = "linux")]
    fn pipe_fds(&self) -> Option<(u32, [BorrowedFd<'_>; 2])> {
        self.pipe.as_ref().map(|pipe| (pipe.pending, pipe.fds()))
    }

    #[cfg(not(target_os = "linux"))]
    fn pipe_fds(&self) -> Option<(u32, [BorrowedFd<'_>; 2])> {
        None
    }

    /// Carries on with the pipe the relay before this one used, `pending` bytes in it.
    #[cfg(target_os = "linux")]
    fn take_pipe(&mut self, read: OwnedFd, write: OwnedFd, pending: u32) -> Result<(), String> {
        let pipe = crate::net::sys::Pipe::from_fds(read, write, pending);
        self.pipe = Some(pipe.map_err(|e| format!("a handed-over pipe: {e}"))?);
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn take_pipe(&mut self, _: OwnedFd, _: OwnedFd, _: u32) -> Result<(), String> {
        Err("splice pipes exist only on Linux".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_without_pipes_goes_over_as_text_alone_and_comes_back_the_same() {
        let mut copying = Copying::new(b"preface".to_vec());
        copying.up.written = 3;
        copying.up.moved = 10;
        copying.down.done = true;
        copying.down.moved = 20;
        copying.spliced = 5;
        copying.quiet = Duration::from_millis(1500);
        let (wire, fds) = copying.to_wire();
        assert!(fds.is_empty());
        let text = serde_json::to_string(&wire).unwrap();
        let back = Copying::from_wire(
            serde_json::from_str(&text).unwrap(),
            &mut std::iter::empty(),
        )
        .unwrap();
        assert_eq!(&back.up.buffer[back.up.written..], b"face");
        assert_eq!(
            (back.up.moved, back.down.moved, back.down.done, back.up.done),
            (10, 20, true, false)
        );
        assert_eq!(
            (back.spliced, back.quiet, back.keepalive_due),
            (5, Duration::from_millis(1500), true)
        );
        assert!(matches!(
            back.down.ends,
            [End::UpstreamReset, End::ClientReset]
        ));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_pipe_named_without_its_descriptors_is_refused() {
        let _alone = crate::net::sys::tests::ONE_AT_A_TIME.lock().unwrap();
        let mut copying = Copying::new(Vec::new());
        copying.down.pipe = Some(crate::net::sys::Pipe::new().unwrap());
        let (wire, fds) = copying.to_wire();
        assert_eq!(fds.len(), 2);
        let text = serde_json::to_string(&wire).unwrap();
        let refused = Copying::from_wire(
            serde_json::from_str(&text).unwrap(),
            &mut std::iter::empty(),
        );
        assert!(refused.is_err());
    }
}
