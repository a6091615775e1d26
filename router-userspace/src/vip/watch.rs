//! Keeps the VIP on its interface while the router runs: reacts to address notifications,
//! double-checks every second (notifications can be lost on socket overrun), re-adds and
//! re-announces, sends the delayed second burst, and releases the address on shutdown.

use std::future;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use rtnetlink::packet_core::NetlinkPayload;
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::netlink::{AddOutcome, Events, Link, Netlink, VipEvent, vip_event};
use super::packet::{self, PacketSocket};
use super::state::{StateFile, VipState, rfc3339};
use super::{VipError, VipSettings, error_chain};

/// How often presence is verified without a notification: the "re-added within 1 s"
/// promise must hold even when a notification was dropped.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) struct Watcher {
    settings: VipSettings,
    nl: Netlink,
    events: Option<Events>,
    sender: PacketSocket,
    state_file: StateFile,
    state: VipState,
    link: Link,
    /// When the delayed second burst of gratuitous ARP is due.
    repeat_at: Option<Instant>,
    /// Last reconcile failure, so a persisting problem is logged once, not every second.
    last_error: Option<String>,
    /// The rtnetlink connection died; it is reopened from the run loop.
    reconnect: bool,
    /// Under VRRP, whether this node should hold the VIP now (it is master); `None`: always,
    /// the single-node ownership.
    wanted: Option<watch::Receiver<bool>>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("settings", &self.settings)
            .field("link", &self.link)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Watcher {
    pub(crate) fn new(
        settings: VipSettings,
        nl: Netlink,
        events: Option<Events>,
        sender: PacketSocket,
        state_file: StateFile,
        link: Link,
        adopted: bool,
    ) -> Self {
        let state = VipState::managed(&settings, adopted);
        Self {
            settings,
            nl,
            events,
            sender,
            state_file,
            state,
            link,
            repeat_at: None,
            last_error: None,
            reconnect: false,
            wanted: None,
        }
    }

    /// Holds the VIP only while `wanted` says so (VRRP: while master), taking it with an
    /// announcement and releasing it as the value changes.
    pub(crate) fn follow(&mut self, wanted: watch::Receiver<bool>) {
        self.wanted = Some(wanted);
    }

    fn is_wanted(&self) -> bool {
        self.wanted.as_ref().is_none_or(|w| *w.borrow())
    }

    fn address(&self) -> Ipv4Addr {
        self.settings.address
    }

    /// First burst after taking the address; schedules the repeat.
    pub(crate) fn announce_now(&mut self) {
        self.burst(false);
    }

    fn burst(&mut self, repeat: bool) {
        let count = self.settings.garp_count;
        if count == 0 {
            return;
        }
        self.repeat_at = (!repeat).then(|| Instant::now() + self.settings.garp_repeat_delay);
        let Some(mac) = self.link.mac else {
            tracing::warn!(vip = %self.address(), interface = %self.settings.interface, "interface has no Ethernet address: gratuitous ARP skipped");
            return;
        };
        match packet::announce(&self.sender, self.link.index, mac, self.address(), count) {
            Ok(()) => {
                tracing::info!(
                    vip = %self.address(),
                    interface = %self.settings.interface,
                    mac = %mac,
                    count,
                    repeat,
                    "gratuitous ARP sent"
                );
                self.state.last_announced = Some(rfc3339(SystemTime::now()));
                self.state.announcements += 1;
                self.record_state(true);
            }
            Err(e) => tracing::warn!(
                vip = %self.address(),
                interface = %self.settings.interface,
                error = %error_chain(&e),
                "gratuitous ARP failed: neighbours keep their old entry until it expires"
            ),
        }
    }

    /// Persists the state; a failure only costs `status` its details, so it is logged.
    pub(crate) fn record_state(&mut self, running: bool) {
        self.state.running = running;
        if let Err(e) = self.state_file.write(&self.state) {
            tracing::warn!(vip = %self.address(), error = %error_chain(&e), "VIP state not recorded");
        }
    }

    /// Runs until `stop` fires or its sender is dropped, then hands itself back so the
    /// caller can release the address with the same sockets.
    pub(crate) async fn run(mut self, mut stop: oneshot::Receiver<()>) -> Self {
        let mut events = self.events.take();
        let mut wanted = self.wanted.clone();
        let mut tick =
            tokio::time::interval_at(Instant::now() + RECONCILE_INTERVAL, RECONCILE_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let repeat_at = self.repeat_at;
            let repeat = async move {
                match repeat_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => future::pending().await,
                }
            };
            let role_change = async {
                match wanted.as_mut() {
                    Some(w) => w.changed().await.is_ok(),
                    None => future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => break,
                changed = role_change => {
                    if changed {
                        self.follow_role().await;
                    } else {
                        // The speaker is gone (stopping): keep what is, until `stop`.
                        wanted = None;
                    }
                }
                event = next_event(&mut events) => match event {
                    Some(msg) if matches!(msg.payload, NetlinkPayload::Overrun(_)) => {
                        tracing::warn!(vip = %self.address(), "netlink notifications overran: checking the VIP now");
                        self.reconcile().await;
                    }
                    Some(msg) => match vip_event(&msg, self.link.index, self.address()) {
                        Some(VipEvent::Removed) if !self.is_wanted() => {}
                        Some(VipEvent::Removed) => {
                            tracing::warn!(
                                vip = %self.address(),
                                interface = %self.settings.interface,
                                "VIP removed from the interface by something else: adding it back"
                            );
                            self.reconcile().await;
                        }
                        Some(VipEvent::Added) => {
                            tracing::debug!(vip = %self.address(), "VIP address notification: present");
                        }
                        None => {}
                    },
                    None => {
                        tracing::warn!(
                            vip = %self.address(),
                            "netlink address notifications ended: relying on the 1 s check"
                        );
                        events = None;
                    }
                },
                _ = tick.tick() => self.reconcile().await,
                () = repeat => self.burst(true),
            }
            if std::mem::take(&mut self.reconnect) {
                // Reopened in the namespace of the runtime thread, which is the router's
                // (all its threads share one namespace).
                match Netlink::connect(&self.settings, true) {
                    Ok((nl, new_events)) => {
                        tracing::info!(vip = %self.address(), "rtnetlink connection reopened");
                        self.nl = nl;
                        events = new_events;
                    }
                    Err(e) => {
                        tracing::warn!(vip = %self.address(), error = %error_chain(&e), "cannot reopen rtnetlink; retrying")
                    }
                }
            }
        }
        self
    }

    /// VRRP changed its mind: take the VIP (and announce it, as keepalived does on
    /// becoming master) or release it.
    async fn follow_role(&mut self) {
        if self.is_wanted() {
            match self.ensure_present().await {
                Ok(_) => {
                    tracing::info!(vip = %self.address(), interface = %self.settings.interface, "VIP taken (VRRP master)");
                    self.record_state(true);
                    self.burst(false);
                }
                Err(e) => {
                    tracing::error!(vip = %self.address(), error = %error_chain(&e), "cannot take the VIP as VRRP master; retrying every second")
                }
            }
        } else {
            self.repeat_at = None;
            // Reset first: a RST needs the VIP as a local address to leave with, so its
            // clients learn at once (and reconnect to the new master) instead of after
            // TCP's retransmissions give up. Again after the removal, for a connection
            // accepted in between.
            self.reset_connections().await;
            match self.remove().await {
                Ok(()) => {
                    tracing::info!(vip = %self.address(), interface = %self.settings.interface, "VIP released (VRRP backup)");
                    self.record_state(true);
                }
                Err(e) => {
                    tracing::error!(vip = %self.address(), error = %error_chain(&e), "cannot release the VIP as VRRP backup")
                }
            }
            self.reset_connections().await;
        }
    }

    async fn reset_connections(&mut self) {
        let address = self.address();
        match tokio::task::spawn_blocking(move || super::reset::reset_connections(address)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                tracing::info!(vip = %address, connections = n, "connections to the VIP reset")
            }
            Ok(Err(e)) => {
                tracing::warn!(vip = %address, "cannot reset the connections to the VIP (they end when TCP gives up): {e}")
            }
            Err(e) => tracing::warn!(vip = %address, "the connection reset task failed: {e}"),
        }
    }

    /// Makes sure the VIP is on the interface; re-adds and re-announces it if not. A VRRP
    /// backup holds no VIP, so there is nothing to check.
    async fn reconcile(&mut self) {
        if !self.is_wanted() {
            return;
        }
        match self.ensure_present().await {
            Ok(readded) => {
                if self.last_error.take().is_some() {
                    tracing::info!(vip = %self.address(), interface = %self.settings.interface, "VIP management recovered");
                }
                if readded {
                    tracing::info!(vip = %self.address(), interface = %self.settings.interface, "VIP added back");
                    self.state.readded += 1;
                    // Recorded before the announcement leaves: whoever sees the new
                    // gratuitous ARP (a neighbour, an operator running `status`) must
                    // also find the re-add counted, not a state file from before it.
                    self.record_state(true);
                    self.burst(false);
                }
            }
            Err(e) => {
                if matches!(
                    &e,
                    VipError::Netlink {
                        source: rtnetlink::Error::RequestFailed,
                        ..
                    }
                ) {
                    self.reconnect = true;
                }
                let text = error_chain(&e);
                if self.last_error.as_deref() != Some(text.as_str()) {
                    tracing::error!(
                        vip = %self.address(),
                        interface = %self.settings.interface,
                        error = %text,
                        "cannot put the VIP back; retrying every second"
                    );
                    self.last_error = Some(text);
                }
            }
        }
    }

    /// Adds the VIP now (VRRP master at start), without counting a re-add.
    pub(crate) async fn add_now(&mut self) -> Result<(), VipError> {
        self.ensure_present().await.map(|_| ())
    }

    async fn ensure_present(&mut self) -> Result<bool, VipError> {
        let link = self.nl.link(&self.settings.interface).await?;
        if link != self.link {
            tracing::info!(
                vip = %self.address(),
                interface = %self.settings.interface,
                index = link.index,
                "VIP interface changed (recreated?): following it"
            );
            self.link = link;
        }
        if self.nl.find_address(link.index).await?.is_some() {
            return Ok(false);
        }
        Ok(self.nl.add_address(link.index).await? == AddOutcome::Added)
    }

    /// Clean shutdown: removes the VIP's own entry unless `keep_on_exit`.
    pub(crate) async fn release(mut self) -> Result<(), VipError> {
        let result = if self.settings.keep_on_exit {
            tracing::info!(vip = %self.address(), interface = %self.settings.interface, "keeping the VIP on exit ([vip] keep_on_exit = true)");
            Ok(())
        } else {
            self.remove().await
        };
        self.record_state(false);
        result
    }

    pub(crate) async fn remove(&mut self) -> Result<(), VipError> {
        let link = match self.nl.link(&self.settings.interface).await {
            Ok(link) => link,
            Err(VipError::InterfaceMissing { .. }) => {
                tracing::info!(vip = %self.address(), interface = %self.settings.interface, "VIP interface gone: nothing to remove");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        match self.nl.find_address(link.index).await? {
            Some(entry) => {
                self.nl.del_address(entry).await?;
                tracing::info!(vip = %self.address(), interface = %self.settings.interface, "VIP removed from the interface");
            }
            None => {
                tracing::info!(vip = %self.address(), interface = %self.settings.interface, "VIP already absent");
            }
        }
        Ok(())
    }
}

async fn next_event(
    events: &mut Option<Events>,
) -> Option<rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>> {
    match events {
        Some(stream) => stream.next().await.map(|(msg, _)| msg),
        None => future::pending().await,
    }
}
