//! The `slim_secure` mode: the same workloads through Slim with the lab's routers in secure
//! mode (`slim-router --secure`: every host socket restricted by the slim_kern module). The lab
//! has one router per host, so the benchmark switches both between plain and secure
//! (`slim-lab routers plain|secure`) whenever the next Slim mode needs the other one, and the
//! modes stay interleaved in every round as the others are.
//!
//! A switch restarts the routers: a running Slim server registers its listener again on its
//! next accept (connections take the overlay until then), and a plain router starts with its
//! pool of leased ports empty. So after every switch the mode's measurement runs once untimed
//! (`--switch-warmup-secs`) before the measured run; every Slim mode is switched to in every
//! round (slim, slim_secure, slim, ...), so each gets the same treatment.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::lab::{Lab, Mode};
use crate::workloads::{self, Ctx, Group};

/// The module's control device; without it the routers cannot run in secure mode.
const SLIM_DEV: &str = "/dev/slim";

pub struct RouterModes<'a> {
    lab: &'a Lab,
    /// Whether some mode of this run needs secure routers: only then are they switched.
    active: bool,
    /// The routers run in secure mode now.
    current: bool,
    /// Where they were when the benchmark began; restored at the end.
    original: bool,
    /// Seconds of the untimed run after a switch.
    warmup_secs: f64,
    /// How long each switch took, in seconds.
    switches: Vec<f64>,
}

impl<'a> RouterModes<'a> {
    /// Fails at once, naming the fix, if a mode needs secure routers and the module is absent.
    pub fn new(lab: &'a Lab, modes: &[Mode], warmup_secs: f64) -> Result<RouterModes<'a>> {
        let active = modes.iter().any(|m| m.secure);
        if active && !Path::new(SLIM_DEV).exists() {
            bail!(
                "mode slim_secure needs the routers in secure mode, and {SLIM_DEV} does not \
                 exist: the slim_kern kernel module is not loaded (`insmod slim_kern.ko`, built \
                 by `make kmod`); `make vm-bench` runs this mode in the QEMU guest"
            );
        }
        let original = lab.lab_mode() == "secure";
        Ok(RouterModes {
            lab,
            active,
            current: original,
            original,
            warmup_secs,
            switches: Vec::new(),
        })
    }

    /// Puts the routers in the mode `mode` needs; true if they had to be switched. Modes
    /// without Slim do not use the routers, and without a secure mode in the run nothing is
    /// ever switched (the lab's routers are measured as they run).
    pub fn ensure(&mut self, mode: &Mode) -> Result<bool> {
        if !self.active || !mode.slim || mode.secure == self.current {
            return Ok(false);
        }
        let t = Instant::now();
        self.lab.set_router_mode(mode.secure)?;
        self.current = mode.secure;
        self.switches.push(t.elapsed().as_secs_f64());
        Ok(true)
    }

    /// Before a measured run: the routers in the mode's mode and, if they were switched, one
    /// untimed run of the same measurement.
    pub fn prepare(&mut self, ctx: &Ctx, group: Group, mode: &Mode) -> Result<()> {
        if !self.ensure(mode)? {
            return Ok(());
        }
        let warm = Ctx {
            lab: ctx.lab,
            testprog: ctx.testprog.clone(),
            spinners: ctx.spinners,
            secs: self.warmup_secs,
            port_base: ctx.port_base,
            dir: ctx.dir.clone(),
        };
        workloads::measure(&warm, group, mode)
            .map(drop)
            .context("the untimed run after switching the routers failed")
    }

    /// The routers back in the mode the lab had before the benchmark.
    pub fn restore(&mut self) -> Result<()> {
        if self.active && self.current != self.original {
            self.lab.set_router_mode(self.original)?;
            self.current = self.original;
        }
        Ok(())
    }

    /// What was done, for the notes; None if nothing was switched.
    pub fn note(&self) -> Option<String> {
        if self.switches.is_empty() {
            return None;
        }
        let mut s = self.switches.clone();
        s.sort_by(f64::total_cmp);
        Some(format!(
            "mode slim_secure: the routers were switched between plain and secure {} times \
             (`slim-lab routers plain|secure`: both restarted in that mode; {:.1} s per switch, \
             median of {:.1}..{:.1} s); after each switch the next Slim mode's measurement ran \
             once untimed for {} s before its measured run",
            s.len(),
            s[s.len() / 2],
            s[0],
            s[s.len() - 1],
            self.warmup_secs
        ))
    }

    pub fn switch_count(&self) -> usize {
        self.switches.len()
    }
}

impl Drop for RouterModes<'_> {
    /// An interrupted or failed run leaves the routers as it found them, if it can.
    fn drop(&mut self) {
        if let Err(e) = self.restore() {
            eprintln!("slim-bench: could not put the routers back in their mode: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::lab::{mode_by_key, KNOWN_MODES, SLIM_SECURE};

    #[test]
    fn only_slim_secure_needs_secure_routers() {
        assert_eq!(mode_by_key("slim_secure"), Some(SLIM_SECURE));
        let secure: Vec<&str> = KNOWN_MODES
            .iter()
            .filter(|m| m.secure)
            .map(|m| m.key)
            .collect();
        assert_eq!(secure, ["slim_secure"]);
        const { assert!(SLIM_SECURE.slim) };
        let mut idx: Vec<u16> = KNOWN_MODES.iter().map(|m| m.index).collect();
        idx.sort_unstable();
        idx.dedup();
        assert_eq!(idx.len(), KNOWN_MODES.len(), "every mode has its own ports");
    }
}
