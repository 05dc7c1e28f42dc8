//! Whether commands may go out together, decided once per server and shared by every
//! connection to it.
//!
//! Pipelining saves round trips only if the server answers commands in the order they
//! came and takes a transfer command before its data connection is up. Servers that run
//! each command on its own task do neither. With `auto`, the first sign of that (a reply
//! that cannot answer the command it was read for, a 425 to a transfer command sent
//! early) switches every connection of the mount to one command at a time, for good.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The `pipelining=` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PipeliningMode {
    /// Pipeline until the server shows it cannot take it, then one at a time.
    #[default]
    Auto,
    /// Always pipeline (a server that reorders replies then fails operations).
    On,
    /// One command at a time, the data connection made before the transfer command.
    Off,
}

impl PipeliningMode {
    /// The option's value as the user writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            PipeliningMode::Auto => "auto",
            PipeliningMode::On => "on",
            PipeliningMode::Off => "off",
        }
    }
}

/// What the mount knows of the server's reply order, shared by its connections.
#[derive(Debug)]
pub struct Pipelining {
    mode: PipeliningMode,
    /// `auto` found that the server cannot take pipelined commands.
    stepped_down: AtomicBool,
    /// `auto` found that the server's control connection breaks after ABOR.
    no_abort: AtomicBool,
    /// A transfer on a data connection opened ahead failed: none is opened ahead again.
    no_ahead: AtomicBool,
    /// Why each of the two happened, for the log, `ftpsfs stats` and `ftpsfs check`.
    reasons: Mutex<Reasons>,
    /// The probe ran (or is not needed).
    probed: AtomicBool,
}

#[derive(Debug, Default)]
struct Reasons {
    stepped_down: Option<String>,
    no_abort: Option<String>,
    no_ahead: Option<String>,
}

impl Pipelining {
    /// The shared state for a mount (or a `check`) with the user's `mode`.
    pub fn new(mode: PipeliningMode) -> Arc<Self> {
        Arc::new(Self {
            mode,
            stepped_down: AtomicBool::new(false),
            no_abort: AtomicBool::new(false),
            no_ahead: AtomicBool::new(false),
            reasons: Mutex::new(Reasons::default()),
            probed: AtomicBool::new(mode != PipeliningMode::Auto),
        })
    }

    /// The user's choice.
    pub fn mode(&self) -> PipeliningMode {
        self.mode
    }

    /// Whether commands may go out together now.
    pub fn pipelines(&self) -> bool {
        match self.mode {
            PipeliningMode::On => true,
            PipeliningMode::Off => false,
            PipeliningMode::Auto => !self.stepped_down.load(Ordering::Relaxed),
        }
    }

    /// In `auto`, switches the mount to one command at a time because of `why`; logged
    /// once. Returns whether the mount sends one command at a time now (false with `on`).
    pub fn step_down(&self, why: &str) -> bool {
        if self.mode != PipeliningMode::Auto {
            return !self.pipelines();
        }
        if !self.stepped_down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the server cannot take pipelined commands ({why}): sending one command at \
                 a time from now on (-o pipelining=off skips the first try)"
            );
            self.lock().stepped_down = Some(why.to_string());
        }
        true
    }

    /// Whether a transfer given up early may be stopped with ABOR (otherwise its control
    /// connection is closed instead).
    pub fn aborts(&self) -> bool {
        !self.no_abort.load(Ordering::Relaxed)
    }

    /// In `auto`, stops using ABOR because of `why` (the control connection broke after
    /// one); logged once. Returns whether ABOR is given up now.
    pub fn stop_aborting(&self, why: &str) -> bool {
        if self.mode != PipeliningMode::Auto {
            return false;
        }
        if !self.no_abort.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "the server's control connection broke after ABOR ({why}): transfers given \
                 up early now close their control connection instead"
            );
            self.lock().no_abort = Some(why.to_string());
        }
        true
    }

    /// Whether a connection may open the next transfer's data connection ahead of it
    /// (see `control/ahead.rs`): only where commands go out together, since the EPSV
    /// rides with other commands, and until a transfer on one failed.
    pub fn opens_ahead(&self) -> bool {
        self.pipelines() && !self.no_ahead.load(Ordering::Relaxed)
    }

    /// Stops opening data connections ahead because of `why` (a transfer on one
    /// failed); logged once. Whatever the mode: it only ever saves round trips.
    pub fn stop_opening_ahead(&self, why: &str) {
        if !self.no_ahead.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "a data connection opened ahead of its transfer failed ({why}): opening \
                 each one when its transfer starts from now on"
            );
            self.lock().no_ahead = Some(why.to_string());
        }
    }

    /// True once, for the first connection, when the probe should run.
    pub fn take_probe(&self) -> bool {
        !self.probed.swap(true, Ordering::Relaxed)
    }

    /// One line on how commands go out, and why.
    pub fn describe(&self) -> String {
        let reasons = self.lock();
        let mut text = match (self.mode, &reasons.stepped_down) {
            (PipeliningMode::On, _) => "pipelined (pipelining=on)".to_string(),
            (PipeliningMode::Off, _) => "one command at a time (pipelining=off)".to_string(),
            (PipeliningMode::Auto, None) => "pipelined (pipelining=auto)".to_string(),
            (PipeliningMode::Auto, Some(why)) => {
                format!("one command at a time (pipelining=auto: {why})")
            }
        };
        if let Some(why) = &reasons.no_abort {
            text.push_str(&format!("; no ABOR ({why})"));
        }
        if let Some(why) = &reasons.no_ahead {
            text.push_str(&format!("; no data connection opened ahead ({why})"));
        }
        text
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Reasons> {
        self.reasons.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_steps_down_once_and_for_good() {
        let p = Pipelining::new(PipeliningMode::Auto);
        assert!(p.pipelines());
        assert!(p.take_probe());
        assert!(!p.take_probe());
        assert!(p.step_down("reply 229 to MDTM"));
        assert!(!p.pipelines());
        assert!(p.step_down("another"));
        assert!(
            p.describe().contains("reply 229 to MDTM"),
            "{}",
            p.describe()
        );
        assert!(!p.describe().contains("another"));
    }

    #[test]
    fn on_and_off_never_change() {
        let on = Pipelining::new(PipeliningMode::On);
        assert!(!on.step_down("x"));
        assert!(on.pipelines());
        assert!(!on.stop_aborting("x"));
        assert!(on.aborts());
        assert!(!on.take_probe());
        let off = Pipelining::new(PipeliningMode::Off);
        assert!(!off.pipelines());
        assert!(off.step_down("x"));
    }

    #[test]
    fn opening_ahead_needs_pipelining_and_stops_for_good() {
        let off = Pipelining::new(PipeliningMode::Off);
        assert!(!off.opens_ahead());
        let on = Pipelining::new(PipeliningMode::On);
        assert!(on.opens_ahead());
        on.stop_opening_ahead("425 Unable to build data connection");
        on.stop_opening_ahead("another");
        assert!(!on.opens_ahead());
        assert!(on.pipelines(), "pipelining itself goes on");
        let described = on.describe();
        assert!(
            described.contains("no data connection opened ahead (425"),
            "{described}"
        );
        assert!(!described.contains("another"), "{described}");
        let auto = Pipelining::new(PipeliningMode::Auto);
        assert!(auto.opens_ahead());
        auto.step_down("reply 229 to MDTM");
        assert!(!auto.opens_ahead());
    }
}
